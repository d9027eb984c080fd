"""Tests of the ctypes binding against the freshly built library
(NEXUSQUANT_LIBRARY points at it in tools/test.sh)."""
import ctypes
import gc
import os
import random

import numpy as np
import pytest

from nexusquant import _lib as L
from nexusquant.core import Context, NexusQuantError, RopeSpec, kv_cache_bytes

SEED = int(os.environ.get("NQ_TEST_SEED", random.SystemRandom().randrange(1 << 30)))
print(f"test_binding seed {SEED}")


def rng():
    return np.random.default_rng(SEED)


def snr_db(ref, got):
    ref = ref.astype(np.float64)
    return 10 * np.log10((ref ** 2).sum() / ((ref - got.astype(np.float64)) ** 2).sum())


def test_struct_layouts_match_library():
    L.check_layouts(L.lib())  # raises on any difference


def test_layout_check_detects_a_drifted_struct(monkeypatch):
    class Drifted(ctypes.Structure):
        _fields_ = [("size", ctypes.c_size_t), ("head_dim", ctypes.c_uint16)]
    monkeypatch.setitem(L.STRUCTS, "nq_config", Drifted)
    with pytest.raises(L.LayoutMismatch):
        L.check_layouts(L.lib())


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_numpy(dtype):
    r = rng()
    k = r.standard_normal((3, 300, 64)).astype(dtype)
    v = r.standard_normal((3, 300, 64)).astype(dtype)
    ctx = Context(64, 3, 9, preset="custom", k_bits=3, v_bits=2, evict=0.0, fp16_sinks=0, fp16_window=0,
                  rope=RopeSpec(mode="none"))
    blk = ctx.compress(k, v)
    k2, v2 = ctx.decode(blk)
    assert snr_db(k, k2) > 14.0
    assert snr_db(v, v2) > 9.0
    info = blk.info()
    assert info["tokens_kept"] == 300
    assert info["resident_bytes"] == blk.nbytes == len(blk.resident_bytes())
    assert info["ratio"] == pytest.approx(info["original_bytes"] / info["resident_bytes"])


def test_key_centering_biased_keys():
    r = rng()
    offset = 30.0 * r.standard_normal((2, 1, 64))
    k = (offset + r.standard_normal((2, 200, 64))).astype(np.float32)
    v = r.standard_normal((2, 200, 64)).astype(np.float32)
    kw = dict(preset="custom", k_bits=3, v_bits=2, evict=0.0, fp16_sinks=0, fp16_window=0, rope=RopeSpec(mode="none"))
    plain, centred = Context(64, 2, key_centering=False, **kw), Context(64, 2, **kw)  # centred by default
    bp, bc = plain.compress(k, v), centred.compress(k, v)
    assert bp.info()["key_mean_bytes"] == 0
    assert bc.info()["key_mean_bytes"] == 2 * 64 * 2
    resid = k - k.astype(np.float64).mean(axis=1, keepdims=True)
    kp, _ = plain.decode(bp)
    kc, _ = centred.decode(bc)
    assert snr_db(resid, kc - (k - resid)) > snr_db(resid, kp - (k - resid)) + 10.0


def test_non_contiguous_input_and_range_decode():
    r = rng()
    base_k = r.standard_normal((200, 2, 32)).astype(np.float32)  # [tokens, heads, dim]
    base_v = r.standard_normal((200, 2, 32)).astype(np.float32)
    k, v = base_k.transpose(1, 0, 2), base_v.transpose(1, 0, 2)
    ctx = Context(32, 2, preset="lossless", rope=RopeSpec(mode="none"))
    blk = ctx.compress(k, v)
    full_k, _ = ctx.decode(blk)
    part_k, _ = ctx.decode(blk, 50, 120)
    np.testing.assert_array_equal(part_k, full_k[:, 50:120])


def test_serialize_and_tamper():
    r = rng()
    k = r.standard_normal((2, 100, 64)).astype(np.float16)
    ctx = Context(64, 2, preset="balanced")
    blk = ctx.compress(k, k.copy())
    data = blk.serialize()
    back = ctx.deserialize(data)
    assert back.digest() == blk.digest()
    np.testing.assert_array_equal(back.positions(1), blk.positions(1))
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(NexusQuantError) as e:
        ctx.deserialize(bytes(bad))
    assert "checksum" in str(e.value)
    with pytest.raises(NexusQuantError):
        ctx.deserialize(data[:-1])


def test_errors_carry_the_library_message():
    with pytest.raises(NexusQuantError) as e:
        Context(60, 2)
    assert "head_dim" in str(e.value) and e.value.status == 2
    with pytest.raises(NexusQuantError) as e:
        Context(64, 2, preset="nonsense")
    assert "nonsense" in str(e.value)
    ctx = Context(64, 2)
    k = np.zeros((2, 10, 64), np.float16)
    with pytest.raises(ValueError):
        ctx.compress(k, np.zeros((2, 11, 64), np.float16))
    with pytest.raises(TypeError):
        ctx.compress(k.astype(np.int32), k.astype(np.int32))


def test_eviction_positions_and_given_scores():
    r = rng()
    T = 256
    k = r.standard_normal((2, T, 64)).astype(np.float16)
    scores = r.standard_normal((2, T)).astype(np.float32)
    ctx = Context(64, 2, preset="custom", k_bits=3, v_bits=2, evict=0.5, sink_tokens=4, recent_window=16,
                  fp16_sinks=4, fp16_window=16)
    blk = ctx.compress(k, k, scores=scores)
    assert blk.tokens_kept == T // 2
    for h in range(2):
        pos = blk.positions(h)
        assert np.all(np.diff(pos) > 0)
        assert list(pos[:4]) == [0, 1, 2, 3] and list(pos[-16:]) == list(range(T - 16, T))
        middle = set(pos[4:-16])
        expect = set((np.argsort(-scores[h, 4:T - 16], kind="stable")[: T // 2 - 20] + 4).tolist())
        assert middle == expect


def test_sequence_append_and_decode_across_blocks():
    r = rng()
    ctx = Context(64, 2, preset="lossless", rope=RopeSpec(mode="none"))
    seq = ctx.sequence(layer=3)
    a = r.standard_normal((2, 100, 64)).astype(np.float16)
    b = r.standard_normal((2, 40, 64)).astype(np.float16)
    seq.append(a, a)
    seq.append(b, b, start_position=100)
    assert seq.num_blocks == 2 and seq.num_tokens == 140
    np.testing.assert_array_equal(seq.positions(0), np.arange(140))
    k, _ = seq.decode(90, 110)
    assert snr_db(np.concatenate([a, b], axis=1)[:, 90:110], k) > 13
    with pytest.raises(NexusQuantError):
        seq.append(b, b, start_position=50)  # positions must continue


def test_handles_free_themselves():
    ctx = Context(64, 2)
    k = np.ones((2, 50, 64), np.float16)
    for _ in range(200):
        blk = ctx.compress(k, k)
        del blk
    gc.collect()
    blk = ctx.compress(k, k)
    blk.free()
    blk.free()  # twice is fine
    with pytest.raises(ValueError):
        blk.info()


def test_kv_cache_arithmetic():
    assert kv_cache_bytes(32, 8, 128, 128_000) / 1e9 == pytest.approx(16.78, abs=0.005)
    assert kv_cache_bytes(80, 8, 128, 128_000) / 1e9 == pytest.approx(41.94, abs=0.005)


def test_torch_tensors_if_available():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(SEED)
    k = torch.randn(2, 64, 64, generator=g, dtype=torch.float32).to(torch.bfloat16)
    ctx = Context(64, 2, preset="lossless", rope=RopeSpec(mode="none"))
    blk = ctx.compress(k, k)
    out = (torch.empty(2, 64, 64, dtype=torch.bfloat16), torch.empty(2, 64, 64, dtype=torch.bfloat16))
    ctx.decode(blk, out=out)
    assert snr_db(k.float().numpy(), out[0].float().numpy()) > 13
