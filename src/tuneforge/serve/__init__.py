"""Serve: an OpenAI-compatible API with continuous batching, a request and feedback log, a playground."""
