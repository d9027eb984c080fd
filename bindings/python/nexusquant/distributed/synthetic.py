"""A synthetic KV cache shaped like Llama-3-8B's, for the handoff demo.

Real keys have a few large channels with a steady sign and carry RoPE; values are
closer to Gaussian. The generator reproduces those two traits (seeded, so both ranks
agree on the queries) without needing the model.
"""
from __future__ import annotations

import numpy as np

LLAMA3_8B = {"layers": 32, "kv_heads": 8, "q_heads": 32, "head_dim": 128, "rope_theta": 500000.0}


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Split-half RoPE (Llama) of x [..., tokens, dim] at `positions`, in float32."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]
    c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def layer_kv(rng: np.random.Generator, kv_heads: int, tokens: int, head_dim: int, theta: float):
    """(k, v) float16 [kv_heads, tokens, head_dim]: keys with outlier channels and RoPE."""
    scale = np.ones((kv_heads, 1, head_dim), np.float32)
    mean = np.zeros_like(scale)
    for h in range(kv_heads):
        ch = rng.choice(head_dim, 4, replace=False)
        scale[h, 0, ch] = rng.uniform(4.0, 10.0, 4)
        mean[h, 0, ch] = rng.choice([-1.0, 1.0], 4) * rng.uniform(2.0, 8.0, 4)
    k = mean + scale * rng.standard_normal((kv_heads, tokens, head_dim), dtype=np.float32)
    k = rope(k, np.arange(tokens), theta)
    v = 0.5 * rng.standard_normal((kv_heads, tokens, head_dim), dtype=np.float32)
    v[:, :, rng.choice(head_dim, 2, replace=False)] *= 3.0
    return k.astype(np.float16), v.astype(np.float16)


def queries(rng: np.random.Generator, layers: int, q_heads: int, head_dim: int, position: int, theta: float):
    """[layers][q_heads, 1, head_dim] float32 queries with RoPE at `position`."""
    out = []
    for _ in range(layers):
        q = rng.standard_normal((q_heads, 1, head_dim), dtype=np.float32)
        out.append(rope(q, np.array([position]), theta))
    return out
