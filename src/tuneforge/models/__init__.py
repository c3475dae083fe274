"""Stage 1: choose and load a pre-trained model (catalogue, bundled GGUF, local folder, hub id)."""
