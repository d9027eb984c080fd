"""nexusquant Python package.

For now this holds the evaluation side: a numpy Llama model that exposes its
KV cache, reference (non-library) KV quantisers, and the ``nq-eval`` harness.
The ctypes binding to the C library will live beside these modules.
"""

__version__ = "0.1.0"
