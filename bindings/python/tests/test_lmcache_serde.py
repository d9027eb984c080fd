"""The LMCache serde: its codec alone (torch only), and inside LMCache's own store/load
path (L1 manager + serde wrapper + in-memory L2 adapter) when lmcache is installed."""
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nexusquant.core import Context, RopeSpec  # noqa: E402
from nexusquant.lmcache_serde import ChunkCorrupt, _Codec  # noqa: E402

H, D, L, T = 2, 64, 3, 96


def _chunk(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, L, T, H * D), generator=g).to(torch.float16)


def _expected(t):
    """What nexusquant itself returns for each layer of the chunk."""
    ctx = Context(D, H, preset="lossless", fp16_sinks=0, fp16_window=0, rope=RopeSpec(mode="none"))
    out = torch.empty_like(t)
    for layer in range(L):
        k = t[0, layer].view(T, H, D).permute(1, 0, 2)
        v = t[1, layer].view(T, H, D).permute(1, 0, 2)
        kd, vd = ctx.decode(ctx.compress(k, v, layer=layer), dtype="float16")
        out[0, layer] = torch.from_numpy(kd).permute(1, 0, 2).reshape(T, H * D)
        out[1, layer] = torch.from_numpy(vd).permute(1, 0, 2).reshape(T, H * D)
    return out


def test_codec_round_trip_is_the_library_decode():
    c = _Codec(num_kv_heads=H)
    t = _chunk()
    data = c.encode(t)
    assert len(data) <= c.bound(t.shape)
    assert len(data) * 5 < t.numel() * 2  # >5x fewer bytes than fp16
    dst = torch.zeros_like(t)
    slot = np.zeros(c.bound(t.shape), np.uint8)
    slot[:len(data)] = np.frombuffer(data, np.uint8)
    c.decode_into(slot, dst)
    assert torch.equal(dst, _expected(t))


def test_codec_refuses_damage_and_writes_nothing():
    c = _Codec(num_kv_heads=H)
    t = _chunk(1)
    data = np.frombuffer(c.encode(t), np.uint8)
    sentinel = torch.full_like(t, 7.0)
    bad_cases = {"magic": (0, 0x01), "block count": (8, 0x01), "payload": (data.size // 2, 0x10),
                 "last byte": (data.size - 1, 0x01)}
    for what, (pos, bit) in bad_cases.items():
        bad = data.copy()
        bad[pos] ^= bit
        dst = sentinel.clone()
        with pytest.raises(ChunkCorrupt):
            c.decode_into(bad, dst)
        assert torch.equal(dst, sentinel), what
    slack = np.concatenate([data, np.zeros(32, np.uint8)])
    slack[-3] = 1
    with pytest.raises(ChunkCorrupt, match="after the last block"):
        c.decode_into(slack, sentinel.clone())
    with pytest.raises(ChunkCorrupt, match="blocks for"):
        c.decode_into(data, torch.zeros((2, L + 1, T, H * D), dtype=torch.float16))
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        _Codec(num_kv_heads=3).encode(t)


def _wait(poll, what):
    for _ in range(600):
        r = poll()
        if r is not None and len(r):
            return r
        time.sleep(0.02)
    pytest.fail(f"LMCache did not finish the {what}")


def test_inside_lmcache_store_and_load():
    pytest.importorskip("lmcache")
    import nexusquant.lmcache_serde as nqs
    from lmcache.v1.distributed.api import ObjectKey
    from lmcache.v1.distributed.config import L1ManagerConfig, L1MemoryManagerConfig
    from lmcache.v1.distributed.l1_manager import L1Manager
    from lmcache.v1.distributed.l2_adapters.mock_l2_adapter import MockL2Adapter, MockL2AdapterConfig
    from lmcache.v1.distributed.l2_adapters.serde_wrapper import SerdeL2AdapterWrapper
    from lmcache.v1.distributed.serde import SerdeConfig, create_serde_processor
    from lmcache.v1.memory_allocators.ad_hoc_memory_allocator import AdHocMemoryAllocator

    assert nqs.register() == "nexusquant"
    proc = create_serde_processor(SerdeConfig(type="nexusquant", kwargs={"num_kv_heads": H}))
    l1 = L1Manager(L1ManagerConfig(memory_config=L1MemoryManagerConfig(size_in_bytes=16 << 20, use_lazy=False,
                                                                        shm_name="")))
    store = MockL2Adapter(MockL2AdapterConfig(1, 10))
    w = SerdeL2AdapterWrapper(store, proc, l1)
    alloc = AdHocMemoryAllocator("cpu")
    t = _chunk(2)
    src = alloc.allocate(t.shape, torch.float16)
    src.tensor.copy_(t)
    key = ObjectKey(chunk_hash=b"\x02" * 32, model_name="llama", kv_rank=0)
    tid = w.submit_store_task([key], [src])
    res = _wait(lambda: w.pop_completed_store_tasks(), "store")
    assert res[tid].is_successful()
    stored = store._memory_objects[key]
    assert stored.get_size() * 5 < t.numel() * 2  # every stored byte counts, slack included

    dst = alloc.allocate(t.shape, torch.float16)
    dst.tensor.zero_()
    tid = w.submit_load_task([key], [dst])
    bits = _wait(lambda: w.query_load_result(tid), "load")
    assert bits.test(0)
    assert torch.equal(dst.tensor, _expected(t))

    stored.raw_data[stored.get_size() // 2] ^= 0x10  # damage at rest: the load must fail
    dst.tensor.fill_(3.0)
    tid = w.submit_load_task([key], [dst])
    bits = _wait(lambda: w.query_load_result(tid), "load")
    assert not bits.test(0)
    assert torch.all(dst.tensor == 3.0)
