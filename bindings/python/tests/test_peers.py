"""Reference quantisers: exact byte counts and error bounds against float64."""

import numpy as np
import pytest

from nexusquant.eval import peers
from nexusquant.eval.schemes import get_scheme, SchemeContext
from nexusquant.model.kvcache import KVCache

H, T, D = 3, 300, 64
N = 2 * H * T * D  # keys + values


@pytest.fixture(scope="module")
def kv():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((H, T, D)).astype(np.float32)
    k[:, :, 5] *= 8.0   # an outlier channel, as real keys have
    v = rng.standard_normal((H, T, D)).astype(np.float32)
    return k, v


def _f16(x):
    return np.float64(np.float16(x))


def test_fp16(kv):
    k, v = kv
    kh, vh, nb = peers.fp16(k, v)
    assert nb == 2 * N
    assert np.all(np.abs(kh.astype(np.float64) - k) <= np.abs(k.astype(np.float64)) * 2.0 ** -11 + 1e-7)


def test_fp8_e4m3_grid():
    # every representable e4m3 magnitude must round to itself
    mant = np.arange(8)
    normals = [(1 + m / 8) * 2.0 ** e for e in range(-6, 9) for m in mant]
    subnormals = [m / 8 * 2.0 ** -6 for m in mant]
    grid = np.array(sorted(set(subnormals + normals)), dtype=np.float64)
    grid = grid[grid <= 448]
    assert np.array_equal(peers.fp8_e4m3_round(grid.astype(np.float32)), grid.astype(np.float32))
    # midpoints round to even mantissa; beyond 448 saturates
    assert peers.fp8_e4m3_round(np.float32([1.0625]))[0] == 1.0      # between 1 and 1.125
    assert peers.fp8_e4m3_round(np.float32([1.1875]))[0] == 1.25     # between 1.125 and 1.25
    assert peers.fp8_e4m3_round(np.float32([1000.0, -1000.0])).tolist() == [448.0, -448.0]


def test_fp8(kv):
    k, v = kv
    kh, vh, nb = peers.fp8(k, v)
    assert nb == N + 8
    for x, xh in ((k, kh), (v, vh)):
        x64 = x.astype(np.float64)
        scale = np.abs(x64).max() / 448.0
        # relative step 2**-3 for normals -> error <= 2**-4 |x|; subnormal floor 2**-10 * scale
        bound = np.maximum(np.abs(x64) * 2.0 ** -4, scale * 2.0 ** -10) * (1 + 1e-5)
        assert np.all(np.abs(xh - x64) <= bound)


# q4_0 maps the signed extreme to -8, so the opposite extreme is clipped to
# +7 steps: its worst case is a whole step, elsewhere half a step.
@pytest.mark.parametrize("name,fn,bits,qmax,steps", [("q8_0", peers.q8_0, 8.5, 127, 0.5),
                                                     ("q4_0", peers.q4_0, 4.5, 8, 1.0)])
def test_llama_blocks(kv, name, fn, bits, qmax, steps):
    k, v = kv
    kh, vh, nb = fn(k, v)
    assert nb * 8 == N * bits
    for x, xh in ((k, kh), (v, vh)):
        b = x.astype(np.float64).reshape(-1, 32)
        d = np.abs(b).max(axis=1, keepdims=True) / qmax
        err = np.abs(xh.reshape(-1, 32) - b)
        # half a step (a whole one at q4_0's clipped end), plus the fp16
        # rounding of the scale times the largest code
        slack = d * qmax * 2.0 ** -11 + 1e-6
        assert np.all(err <= d * steps + slack), name
        inner = np.broadcast_to(np.abs(b) < d * (qmax - 1), err.shape)
        assert np.all((err <= d * 0.5 + slack)[inner]), name


def test_q4_0_matches_ggml_formula():
    x = np.float32([[-3.0] + [0.1 * i for i in range(31)]])
    xh = peers.q4_0_roundtrip(x)
    d = np.float16(-3.0 / -8.0).astype(np.float32)   # scale from the signed max
    assert xh[0, 0] == pytest.approx(-8 * d)
    assert np.allclose(xh / d, np.round(xh / d))


def test_hadamard_orthonormal(kv):
    k, _ = kv
    hk = peers.hadamard(k)
    assert np.allclose(peers.hadamard(hk), k, atol=1e-5)
    assert np.allclose((hk.astype(np.float64) ** 2).sum(-1), (k.astype(np.float64) ** 2).sum(-1), rtol=1e-5)


def test_q4_0h_beats_q4_0_on_outlier_channel(kv):
    k, v = kv
    e_plain = np.mean((peers.q4_0(k, v)[0] - k) ** 2)
    e_rot = np.mean((peers.q4_0h(k, v)[0] - k) ** 2)
    assert peers.q4_0h(k, v)[2] == peers.q4_0(k, v)[2]
    assert e_rot < e_plain


@pytest.mark.parametrize("bits,group,res", [(2, 32, 128), (4, 32, 128), (2, 128, 32), (4, 32, 32)])
def test_kivi(kv, bits, group, res):
    k, v = kv
    kh, vh, nb = peers.kivi(k, v, bits, group, res)
    nk = (T - res) // group * group
    nv = T - res
    expect = (H * D * (nk + nv) * bits) // 8 + 4 * H * (nk // group * D + nv * (D // min(group, D))) \
        + 2 * H * D * ((T - nk) + (T - nv))
    assert nb == expect
    # fp16 window is exact to fp16
    assert np.allclose(kh[:, nk:], k[:, nk:], rtol=2.0 ** -10, atol=1e-6)
    assert np.allclose(vh[:, nv:], v[:, nv:], rtol=2.0 ** -10, atol=1e-6)
    # quantised part: within half a step of the per-group range (+ fp16 rounding)
    levels = 2 ** bits - 1
    kg = k[:, :nk].astype(np.float64).reshape(H, nk // group, group, D)
    step = (kg.max(2, keepdims=True) - kg.min(2, keepdims=True)) / levels
    err = np.abs(kh[:, :nk].reshape(kg.shape) - kg)
    assert np.all(err <= step * 0.5 * (1 + 2.0 ** -9) + np.abs(kg).max() * 2.0 ** -10)
    gv = min(group, D)
    vg = v[:, :nv].astype(np.float64).reshape(H, nv, D // gv, gv)
    vstep = (vg.max(3, keepdims=True) - vg.min(3, keepdims=True)) / levels
    verr = np.abs(vh[:, :nv].reshape(vg.shape) - vg)
    assert np.all(verr <= vstep * 0.5 * (1 + 2.0 ** -9) + np.abs(vg).max() * 2.0 ** -10)


def test_error_ordering(kv):
    k, v = kv
    mse = {n: np.mean((f(k, v)[0] - k) ** 2) for n, f in
           [("fp16", peers.fp16), ("q8_0", peers.q8_0), ("fp8", peers.fp8), ("q4_0", peers.q4_0)]}
    assert mse["fp16"] < mse["q8_0"] < mse["fp8"] < mse["q4_0"]


def test_registry_applies_per_layer(kv):
    k, v = kv
    cache = KVCache.dense([k, k], [v, v])
    for name in ("fp16", "fp8", "q8_0", "q4_0", "q4_0h", "kivi2", "kivi4-g128-r32"):
        res = get_scheme(name).apply(cache, SchemeContext())
        assert res.cache.is_dense() and res.cache.next_pos == T
        assert res.cache.keys[1].shape == k.shape
        assert res.nbytes > 0
    with pytest.raises(KeyError):
        get_scheme("no-such-scheme")
