"""Model side: fetch the GGUF, read it, and run a numpy Llama forward pass."""
