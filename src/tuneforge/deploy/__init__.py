"""Deploy: export a run's model (merged Hugging Face folder, PEFT adapter, GGUF) with a model card."""
