"""What the integration needs from transformers, checked where it attaches.

The integration relies on a handful of transformers internals: the keyword a model's
forward takes its cache under, the `Cache`/`CacheLayerMixin` layer API, and the
attention-function registry it routes the queries through. These move between
releases (5.2x renamed `past_key_values` to `cache`), so each one is checked when it is
used and a mismatch raises `AttachError` naming the installed release, instead of the
model quietly running with its own uncompressed cache.
"""
from __future__ import annotations

import inspect

import transformers
from transformers.cache_utils import Cache, CacheLayerMixin

# The releases CI tests (the current one and the one before it); pyproject's `hf` extra
# declares the same range.
TESTED_RANGE = ">=5.24,<5.26"
# Keywords under which a model's forward has taken its cache, newest first.
_CACHE_ARGUMENTS = ("cache", "past_key_values")


class AttachError(RuntimeError):
    """The integration cannot attach to this model with the installed transformers."""


def version() -> str:
    return transformers.__version__


def attach_error(what: str) -> AttachError:
    return AttachError(f"nexusquant: cannot attach to transformers {version()}: {what}. The integration is tested "
                       f"with transformers {TESTED_RANGE} (pip install 'nexusquant[hf]').")


def cache_argument(fn, where: str) -> str:
    """The keyword `fn` takes its cache under ("cache" on transformers >= 5.2x,
    "past_key_values" before). Raises AttachError when it takes neither."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError) as e:
        raise attach_error(f"the signature of {where} cannot be read ({e})") from None
    named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for name in _CACHE_ARGUMENTS:
        if name in named:
            return name
    raise attach_error(f"{where} takes neither `cache` nor `past_key_values` (its parameters: "
                       f"{', '.join(params) or 'none'})")


def check_cache_api():
    """The `Cache` API NexusQuantCache implements: a Cache built from a list of layers,
    whose layers answer update / get_seq_length / get_mask_sizes(query_length)."""
    try:
        init = inspect.signature(Cache.__init__).parameters
        mask = inspect.signature(CacheLayerMixin.get_mask_sizes).parameters
    except (TypeError, ValueError) as e:
        raise attach_error(f"the Cache API cannot be read ({e})") from None
    missing = [m for m in ("update", "get_seq_length", "get_mask_sizes", "lazy_initialization")
               if not callable(getattr(CacheLayerMixin, m, None))]
    if "layers" not in init:
        missing.append("Cache(layers=...)")
    if list(mask) != ["self", "query_length"]:
        missing.append("CacheLayerMixin.get_mask_sizes(query_length)")
    if missing:
        raise attach_error("its Cache API differs from the one NexusQuantCache implements (missing or changed: "
                           + ", ".join(missing) + ")")
