"""Model side: fetch the GGUF, read it, and run a numpy Llama forward pass."""


def load(path=None):
    """(NumpyLlama, BPETokenizer) from a GGUF path (default: fetch SmolLM2).
    One GGUFReader serves both: parsing its 49k-entry vocab is the slow part."""
    from .fetch import fetch_model
    from .gguf_llama import load_gguf, open_gguf
    from .numpy_llama import NumpyLlama
    from .tokenizer import BPETokenizer

    reader = open_gguf(path or fetch_model())
    return NumpyLlama(load_gguf(reader)), BPETokenizer.from_gguf(reader)
