"""Eviction scores from the prefill's queries.

The library ranks a prefill's tokens by the attention its last queries pay them. The
queries exist only inside the model's attention function, so `nexusquant_evict` routes
the model's attention implementation (an entry of transformers' ALL_ATTENTION_FUNCTIONS)
through a tap that hands each layer's query states to the cache whose forward is
running; the cache turns them into scores with `query_scores`.
"""
from __future__ import annotations

import contextvars
import math
import sys
import threading

import torch

from .compat import attach_error


@torch.no_grad()
def query_scores(q: torch.Tensor, k: torch.Tensor, kv_heads: int, pool: int = 15) -> torch.Tensor:
    """What the library's NQ_SCORES_QUERIES computes, in torch: softmax(q k^T / sqrt(d)) of
    the last W queries over the keys they see (causal), summed over the queries,
    max-pooled over `pool` tokens (the library default, 15), summed over the query heads of each KV head.
    q [q_heads, W, d], k [kv_heads, T, d] (both post-RoPE) -> float32 [kv_heads, T], on q's
    device, outside autograd (scores are not differentiable; a forward with gradients on
    must not make them part of the graph)."""
    q, k = q.detach(), k.detach()
    hq, w, d = q.shape
    t = k.shape[1]
    g = hq // kv_heads
    future = torch.arange(t, device=q.device)[None, :] > torch.arange(t - w, t, device=q.device)[:, None]
    out = torch.empty((kv_heads, t), dtype=torch.float32, device=q.device)
    for h in range(kv_heads):  # one KV head at a time bounds the [g, W, T] logits
        logits = torch.matmul(q[h * g:(h + 1) * g].float(), k[h].float().t()) / math.sqrt(d)
        logits.masked_fill_(future, float("-inf"))
        p = torch.softmax(logits, dim=-1).sum(1)  # [g, T]
        p = torch.nn.functional.max_pool1d(p[:, None, :], pool, stride=1, padding=pool // 2)[:, 0]
        out[h] = p.sum(0)
    return out


# ---------------------------------------------------------------------------- query tap

# The cache whose model forward is running in this thread (set by nexusquant_evict's
# forward wrapper): the attention tap hands it each layer's query states.
ACTIVE: contextvars.ContextVar = contextvars.ContextVar("nexusquant_active_cache", default=None)
# The same cache while its forward's attention runs through the tap (set only when the
# model's attention implementation is tapped): its decode steps may then attend over the
# blocks (the tap computes that attention).
TAPPED: contextvars.ContextVar = contextvars.ContextVar("nexusquant_tapped_cache", default=None)
_TAP_LOCK = threading.Lock()
_TAPS: dict = {}  # attention implementation name -> [users, the local mapping entry it replaced]


def _attention_functions():
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        raise attach_error("transformers.modeling_utils has no ALL_ATTENTION_FUNCTIONS") from None
    if not isinstance(getattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping", None), dict):
        raise attach_error("ALL_ATTENTION_FUNCTIONS has no local mapping to route the attention through")
    return ALL_ATTENTION_FUNCTIONS


def tappable(impl) -> bool:
    """Whether the attention implementation `impl` is one the tap can route."""
    return isinstance(impl, str) and (impl == "eager" or impl in _attention_functions())


def _eager_attention_of(module):
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _make_tap(original):
    def nexusquant_attention_tap(module, query, key, value, attention_mask, *args, **kwargs):
        cache = ACTIVE.get()
        if cache is not None and getattr(module, "layer_idx", None) is not None:
            cache._observe_queries(module.layer_idx, query)
            if TAPPED.get() is cache:
                out = cache._attention(module, query, key, value, attention_mask, kwargs)
                if out is not None:
                    return out, None
        fn = original if original is not None else _eager_attention_of(module)
        return fn(module, query, key, value, attention_mask, *args, **kwargs)
    return nexusquant_attention_tap


def install_tap(impl: str):
    """Routes the attention implementation `impl` through a tap that passes the query
    states to the active cache (a no-op for any forward that has no active cache)."""
    funcs = _attention_functions()
    with _TAP_LOCK:
        entry = _TAPS.get(impl)
        if entry is not None:
            entry[0] += 1
            return
        previous = funcs._local_mapping.get(impl, _MISSING)
        original = None if impl == "eager" and previous is _MISSING else funcs[impl]
        funcs[impl] = _make_tap(original)
        _TAPS[impl] = [1, previous]


def remove_tap(impl: str):
    funcs = _attention_functions()
    with _TAP_LOCK:
        entry = _TAPS[impl]
        entry[0] -= 1
        if entry[0]:
            return
        del _TAPS[impl]
        if entry[1] is _MISSING:
            funcs._local_mapping.pop(impl, None)
        else:
            funcs._local_mapping[impl] = entry[1]



class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()
