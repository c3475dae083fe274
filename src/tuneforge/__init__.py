"""tuneforge: fine-tune pre-trained generative models on your own data, end to end."""

__version__ = "0.1.0"
