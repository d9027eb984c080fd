"""Reference KV quantisers (not the library) on numpy arrays.

Every quantiser takes one layer's keys and values as float32
``[kv_heads, tokens, head_dim]`` arrays and returns ``(k_hat, v_hat, nbytes)``:
the dequantised arrays (what attention then sees) and the exact storage those
codes would take, metadata included. Scales that a real implementation keeps
in fp16 are rounded to fp16 *before* use here, so the error we measure is the
error of the stored format, not of an idealised float32 one.

Formats:
  fp16      plain half precision (the usual serving baseline)
  fp8       e4m3 (OCP "fn": max 448, no inf) with one fp32 scale per tensor
  q8_0      llama.cpp block: 32 int8 + fp16 scale          -> 8.5 bits/elem
  q4_0      llama.cpp block: 32 x 4-bit (offset 8) + fp16 scale -> 4.5 bits/elem
  q4_0h     q4_0 after an orthonormal Hadamard rotation of head_dim (spreads
            outlier channels over the block; the rotation needs no storage)
  kivi{2,4} KIVI: keys per channel in groups of G tokens, values per token in
            groups of G channels, fp16 scale+zero per group, the most recent
            R tokens kept in fp16
"""

from typing import Tuple

import numpy as np

Layer = Tuple[np.ndarray, np.ndarray, int]

FP8_E4M3_MAX = 448.0


def _f16(x):
    """Round to fp16 and come back to float32 (storage rounding of metadata)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


# -- fp16 / fp8 ---------------------------------------------------------------
def fp16(k: np.ndarray, v: np.ndarray) -> Layer:
    return _f16(k), _f16(v), 2 * (k.size + v.size)


def fp8_e4m3_round(x: np.ndarray) -> np.ndarray:
    """Round float32 values (already scaled into range) to the nearest e4m3
    value, ties to even. 3 mantissa bits; normal exponents -6..8; subnormals
    are multiples of 2**-9; saturate at +-448."""
    x = np.asarray(x, dtype=np.float32)
    a = np.minimum(np.abs(x), FP8_E4M3_MAX)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(a, where=a > 0, out=np.full_like(a, -126.0)))
    e = np.maximum(e, -6.0)                 # below 2**-6 the spacing is fixed
    quantum = np.exp2(e - 3.0)
    r = np.rint(a / quantum) * quantum      # rint = round half to even
    return (np.sign(x) * np.minimum(r, FP8_E4M3_MAX)).astype(np.float32)


def _fp8_tensor(x):
    amax = float(np.abs(x).max())
    scale = np.float32(amax / FP8_E4M3_MAX) if amax > 0 else np.float32(1.0)
    return fp8_e4m3_round(x / scale) * scale, x.size + 4   # + fp32 scale


def fp8(k: np.ndarray, v: np.ndarray) -> Layer:
    (kh, kb), (vh, vb) = _fp8_tensor(k), _fp8_tensor(v)
    return kh, vh, kb + vb


# -- llama.cpp blocks -------------------------------------------------------------
QK = 32  # llama.cpp block size


def _blocks(x):
    if x.shape[-1] % QK:
        raise ValueError(f"last dim {x.shape[-1]} is not a multiple of {QK}")
    return x.reshape(-1, QK)


def q8_0_roundtrip(x: np.ndarray) -> np.ndarray:
    """ggml quantize_row_q8_0_ref: d = amax/127, q = round(x/d), x^ = q*fp16(d)."""
    b = _blocks(x)
    d = np.abs(b).max(axis=1, keepdims=True) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    t = b * inv
    q = np.sign(t) * np.floor(np.abs(t) + 0.5)   # C roundf: ties away from zero
    return (q * _f16(d)).reshape(x.shape).astype(np.float32)


def q4_0_roundtrip(x: np.ndarray) -> np.ndarray:
    """ggml quantize_row_q4_0_ref: d = (signed value of max |x|) / -8,
    q = min(15, trunc(x/d + 8.5)), x^ = (q - 8) * fp16(d)."""
    b = _blocks(x)
    idx = np.abs(b).argmax(axis=1)
    mx = b[np.arange(len(b)), idx][:, None]
    d = mx / -8.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(15.0, np.trunc(b * inv + 8.5))
    return ((q - 8.0) * _f16(d)).reshape(x.shape).astype(np.float32)


def q8_0(k, v) -> Layer:
    n = k.size + v.size
    return q8_0_roundtrip(k), q8_0_roundtrip(v), n // QK * (2 + QK)


def q4_0(k, v) -> Layer:
    n = k.size + v.size
    return q4_0_roundtrip(k), q4_0_roundtrip(v), n // QK * (2 + QK // 2)


def hadamard(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform over the last axis (a power
    of two). It is its own inverse."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError("Hadamard needs a power-of-two head_dim")
    y = np.array(x, dtype=np.float32, copy=True).reshape(-1, d)
    h = 1
    while h < d:
        y = y.reshape(-1, d // (2 * h), 2, h)
        a, b = y[:, :, 0, :].copy(), y[:, :, 1, :]
        y[:, :, 0, :] += b
        y[:, :, 1, :] = a - b
        h *= 2
    return (y.reshape(x.shape) / np.sqrt(d)).astype(np.float32)


def q4_0h(k, v) -> Layer:
    n = k.size + v.size
    kh = hadamard(q4_0_roundtrip(hadamard(k)))
    vh = hadamard(q4_0_roundtrip(hadamard(v)))
    return kh, vh, n // QK * (2 + QK // 2)


# -- KIVI ---------------------------------------------------------------------
def _asym_quant(x: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Min/max asymmetric round-to-nearest along ``axis`` with fp16 scale and zero."""
    lo = _f16(x.min(axis=axis, keepdims=True))
    hi = x.max(axis=axis, keepdims=True)
    levels = (1 << bits) - 1
    scale = _f16((hi - lo) / levels)
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.clip(np.round((x - lo) * inv), 0, levels)
    return (q * scale + lo).astype(np.float32)


def kivi(k: np.ndarray, v: np.ndarray, bits: int, group: int = 32, residual: int = 128) -> Layer:
    """KIVI on one layer. Keys leave the fp16 window only in whole groups of
    ``group`` tokens (their statistics are per channel over those tokens);
    values leave it token by token."""
    H, T, d = k.shape
    gv = min(group, d)
    if d % gv:
        raise ValueError("head_dim must be a multiple of the value group size")
    nk = max(T - residual, 0) // group * group   # quantised key tokens
    nv = max(T - residual, 0)                    # quantised value tokens

    kh = _f16(k)
    if nk:
        kq = k[:, :nk].reshape(H, nk // group, group, d)
        kh[:, :nk] = _asym_quant(kq, bits, axis=2).reshape(H, nk, d)
    vh = _f16(v)
    if nv:
        vq = v[:, :nv].reshape(H, nv, d // gv, gv)
        vh[:, :nv] = _asym_quant(vq, bits, axis=3).reshape(H, nv, d)

    code_bits = (nk + nv) * H * d * bits
    meta_bytes = 4 * (H * (nk // group) * d + H * nv * (d // gv))   # fp16 scale + zero
    fp16_bytes = 2 * H * d * ((T - nk) + (T - nv))
    return kh, vh, code_bits // 8 + meta_bytes + fp16_bytes
