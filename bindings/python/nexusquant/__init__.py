"""nexusquant Python package.

``nexusquant.core`` is the ctypes binding to the C library. ``nexusquant.model``
is a numpy Llama model that exposes and accepts its KV cache, and
``nexusquant.eval`` holds reference KV quantisers, the scheme registry and the
``nq-eval`` harness.
"""

__version__ = "0.1.0"
