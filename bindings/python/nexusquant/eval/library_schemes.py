"""Compression schemes backed by libnexusquant, applied to a model's KV cache.

Each layer's post-RoPE keys and values go through the library as one block (real
bytes: the ratio counts every byte of every block); the decoded keys come back rotated
at their original positions, with each head's kept positions, which is exactly what
the model attends to afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..core import Context, RopeSpec
from ..model.kvcache import KVCache


@dataclass
class LibraryScheme:
    name: str
    preset: str = "custom"
    k_bits: Optional[int] = None
    v_bits: Optional[int] = None
    evict: Optional[float] = None
    codec: str = "e8"
    evict_mode: str = "per-head"
    fp16_sinks: Optional[int] = None
    fp16_window: Optional[int] = None
    sink_tokens: Optional[int] = None
    recent_window: Optional[int] = None
    overrides: list = field(default_factory=list)
    use_queries: bool = True   # observation-window query scores when the model gives them

    def context(self, head_dim: int, kv_heads: int, q_heads: int, rope_theta: float, n_layers: int) -> Context:
        return Context(head_dim, kv_heads, q_heads, preset=self.preset, k_bits=self.k_bits, v_bits=self.v_bits,
                       evict=self.evict, codec=self.codec, evict_mode=self.evict_mode,
                       fp16_sinks=self.fp16_sinks, fp16_window=self.fp16_window, sink_tokens=self.sink_tokens,
                       recent_window=self.recent_window, overrides=self.overrides or None, num_layers=n_layers,
                       rope=RopeSpec(mode="remove", pairing="split", theta=rope_theta))

    def apply(self, cache: KVCache, *, q_heads: int, rope_theta: float, queries=None):
        """Returns (new KVCache, compressed bytes, resident block count).

        queries: optional per-layer [q_heads, W, head_dim] last queries (post-RoPE)."""
        kv_heads = cache.n_kv_heads
        head_dim = cache.keys[0][0].shape[-1]
        ctx = self.context(head_dim, kv_heads, q_heads, rope_theta, cache.n_layers)
        keys, values, positions = [], [], []
        total = 0
        for layer in range(cache.n_layers):
            k = np.ascontiguousarray(np.asarray(cache.keys[layer], dtype=np.float32))
            v = np.ascontiguousarray(np.asarray(cache.values[layer], dtype=np.float32))
            pos = np.asarray(cache.positions[layer])[0]
            q = None
            if self.use_queries and queries is not None:
                q = np.ascontiguousarray(queries[layer], dtype=np.float32)
            blk = ctx.compress(k, v, layer=layer, positions=pos, queries=q)
            total += blk.nbytes
            kd, vd = ctx.decode(blk, dtype="float32")
            keys.append(kd)
            values.append(vd)
            positions.append(np.stack([blk.positions(h) for h in range(kv_heads)]))
            blk.free()
        out = KVCache(keys, values, positions, cache.next_pos)
        return out, total


def library_schemes() -> dict:
    """Named schemes: the presets, plus explicit E8 and scalar-codec points at equal bits."""
    s = {
        "lossless": LibraryScheme("lossless", preset="lossless"),
        "high": LibraryScheme("high", preset="high"),
        "balanced": LibraryScheme("balanced", preset="balanced"),
        "max": LibraryScheme("max", preset="max"),
    }
    for kb, vb in ((4, 4), (4, 3), (3, 3), (3, 2), (2, 2)):
        for codec in ("e8", "scalar"):
            name = f"{codec}-k{kb}v{vb}"
            s[name] = LibraryScheme(name, k_bits=kb, v_bits=vb, evict=0.0, codec=codec)
    return s
