"""Experimental centred schemes (-ck / -cv): a per-head mean taken out before coding."""

import numpy as np

from nexusquant.eval.schemes import SchemeContext, get_scheme
from nexusquant.model.kvcache import KVCache


class _Cfg:
    n_heads, rope_theta = 4, 10000.0


def _rope(x, positions, inverse=False):
    # split-half RoPE, as the library's "split" pairing
    d = x.shape[-1]
    ang = np.asarray(positions, dtype=np.float64)[..., None] * 10000.0 ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    if inverse:
        sin = -sin
    h = d // 2
    out = np.empty_like(x)
    out[..., :h] = x[..., :h] * cos - x[..., h:] * sin
    out[..., h:] = x[..., h:] * cos + x[..., :h] * sin
    return out


def test_key_centring_removes_a_per_head_bias():
    rng = np.random.default_rng(0)
    H, T, D = 2, 256, 64
    bias = np.zeros((H, 1, D), np.float32)
    bias[:, :, :4] = 40.0                       # a few large constant channels
    k0 = (rng.standard_normal((H, T, D)) + bias).astype(np.float32)
    k = _rope(k0, np.arange(T))
    v = rng.standard_normal((H, T, D)).astype(np.float32)
    cache = KVCache.dense([k], [v])
    ctx = SchemeContext(config=_Cfg(), rope=_rope)
    plain = get_scheme("e8-k3v2-nokc").apply(cache, ctx)
    centred = get_scheme("e8-k3v2-ck-cv").apply(cache, ctx)
    err = lambda r: float(np.mean((r.cache.keys[0] - k) ** 2))
    assert err(centred) < 0.1 * err(plain)
    # the means are counted: two fp16 vectors per head
    assert centred.nbytes == plain.nbytes + 2 * H * D * 2
    assert np.array_equal(centred.cache.positions[0], plain.cache.positions[0])


def test_library_key_centring_matches_the_emulation():
    # -kc: the C library takes the mean out itself (nq_config.key_centering)
    rng = np.random.default_rng(1)
    H, T, D = 2, 256, 64
    bias = np.zeros((H, 1, D), np.float32)
    bias[:, :, :4] = 40.0
    k = _rope((rng.standard_normal((H, T, D)) + bias).astype(np.float32), np.arange(T))
    v = rng.standard_normal((H, T, D)).astype(np.float32)
    cache = KVCache.dense([k], [v])
    ctx = SchemeContext(config=_Cfg(), rope=_rope)
    plain = get_scheme("e8-k3v2-nokc").apply(cache, ctx)
    lib = get_scheme("e8-k3v2-kc").apply(cache, ctx)
    emu = get_scheme("e8-k3v2-ck").apply(cache, ctx)
    err = lambda r: float(np.mean((r.cache.keys[0] - k) ** 2))
    assert err(lib) < 0.1 * err(plain)
    assert err(lib) < 2 * err(emu)
    assert lib.nbytes == plain.nbytes + H * D * 2
    assert np.array_equal(lib.cache.positions[0], plain.cache.positions[0])
