"""Decode-step attention of a compressed layer without decoding it: the library's
`Context.attend` over the layer's blocks (output and log-sum-exp per query row), torch
attention over the full-precision tail the cache holds (window + new tokens), and the
two merged by their log-sum-exps.

`NexusQuantLayer.update` decides, per forward, whether a layer's step goes this way (see
`NexusQuantCache.attention`); when it does it returns only the tail as the layer's
keys and values, and the attention tap (`scores._make_tap`) calls `attend_layer` in
place of the model's attention function for that layer.

Merge rule (the one `nq_attention_merge` implements, in torch here so that CUDA tensors
stay on the device): for two partial results (o1, lse1), (o2, lse2) of the same query
row, lse = log(exp(lse1) + exp(lse2)) and o = exp(lse1 - lse) o1 + exp(lse2 - lse) o2;
a part with lse = -inf (no visible key) contributes nothing.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .compat import attach_error

# The most query tokens one nq_attention_decode call takes per sequence; longer steps
# (a second turn's prompt) decode the compressed tokens instead.
MAX_QUERY_TOKENS = 64


def tail_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor],
                   scale: float, softcap: float):
    """float32 attention of query [b, hq, t, d] over key/value [b, hk, n, d] (the last n
    keys of the layer; the queries are the last t of them), with `mask` the model's 4D
    attention mask (bool: True = attend, or additive float) whose last n columns belong
    to these keys, or None (causal, aligned at the last key). Returns out [b, t, hq, d]
    and lse [b, t, hq] (-inf where no key is visible)."""
    b, hq, t, d = query.shape
    hk, n, dv = key.shape[1], key.shape[2], value.shape[-1]
    g = hq // hk
    # 3D batched products, one per (element, KV head) with its g query heads x t tokens
    # as rows (torch's 4D matmul over a transposed operand is far slower for these sizes)
    q = query.float().reshape(b, hk, g * t, d).reshape(b * hk, g * t, d)
    k = key.float().reshape(b * hk, n, d)
    v = value.float().reshape(b * hk, n, dv)
    logits = torch.bmm(q, k.transpose(1, 2)).view(b, hk, g, t, n) * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if mask is None:
        # query i sits at key n - t + i: it sees keys 0 .. n - t + i
        future = torch.arange(n, device=query.device)[None, :] > torch.arange(n - t, n, device=query.device)[:, None]
        logits = logits.masked_fill(future, float("-inf"))
    else:
        if mask.ndim != 4 or mask.shape[-1] < n or mask.shape[-2] != t or mask.shape[1] not in (1, hq):
            raise attach_error(f"the attention mask of a decode step has shape {tuple(mask.shape)}, expected "
                               f"[batch, 1 or {hq}, {t}, >= {n}]")
        m = mask[..., -n:]
        m = m[:, :, None] if m.shape[1] == 1 else m.reshape(m.shape[0], hk, g, t, n)
        if m.dtype == torch.bool:
            logits = logits.masked_fill(~m, float("-inf"))
        else:
            logits = logits + m.float()
    lse = torch.logsumexp(logits, dim=-1)  # [b, hk, g, t]
    p = torch.exp(logits - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    out = torch.bmm(p.reshape(b * hk, g * t, n), v)  # rows with no visible key: zeros
    out = out.view(b, hq, t, dv)
    return out.transpose(1, 2), lse.reshape(b, hq, t).transpose(1, 2)


def merge(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor):
    """The attention over both key sets of two partial results (float32; o [..., d],
    lse [...]): see the module docstring."""
    lse = torch.logaddexp(lse1, lse2)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    w1 = torch.exp(lse1 - safe)[..., None]
    w2 = torch.exp(lse2 - safe)[..., None]
    return w1 * o1 + w2 * o2, lse


def attend_layer(layer, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: Optional[torch.Tensor], kwargs: dict):
    """The attention output [b, t, hq, d] (query's dtype) of a decode step of compressed
    layer `layer`: its blocks as they were when `update` ran (`layer._attend_blocks`)
    plus the tail `key`/`value` that `update` returned."""
    blocks = layer._attend_blocks
    layer._attend_blocks = None
    if kwargs.get("sliding_window") is not None:
        raise attach_error(f"layer {layer.layer_idx} is compressed as full attention but its attention function "
                           f"was given sliding_window={kwargs['sliding_window']}")
    b, hq, t, d = query.shape
    scale = kwargs.get("scaling")
    if scale is None:
        scale = getattr(module, "scaling", None)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    softcap = float(kwargs.get("softcap") or 0.0)
    dev = query.device
    o1 = torch.zeros((b, t, hq, value.shape[-1]), dtype=torch.float32, device=dev)
    l1 = torch.full((b, t, hq), float("-inf"), dtype=torch.float32, device=dev)
    qt = query.transpose(1, 2)  # [b, t, hq, d]: RoPE applied as the model applies it
    staging = query.is_cuda and layer._cache.transfer == "host-staging"
    stream = layer._stream(query)
    for i, blks in enumerate(blocks):
        if not blks:
            continue  # nothing compressed for this element: only the tail
        qi = qt[i].cpu() if staging else qt[i]
        out, lse = blks[0]._ctx.attend(blks, qi, scale=float(scale), softcap=softcap, stream=stream)
        if staging:
            out, lse = out.to(dev, non_blocking=True), lse.to(dev, non_blocking=True)
        o1[i] = out
        l1[i] = lse
    layer.attend_calls += 1
    o2, l2 = tail_attention(query, key, value, attention_mask, float(scale), softcap)
    out, _ = merge(o1, l1, o2, l2)
    return out.to(query.dtype).contiguous()
