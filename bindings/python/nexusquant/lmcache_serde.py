"""An LMCache serde ("nexusquant") that stores KV chunks as nexusquant archives.

LMCache (0.5.x, `lmcache.v1.distributed.serde`) moves KV chunks shaped
[2, num_layers, num_tokens, num_kv_heads * head_dim] between its memory tiers and L2
backends (local disk, Redis, S3, ...). This serde compresses each layer of a chunk
into one block and writes the blocks' archive forms in the nq container
(docs/FORMAT.md section 3): typically 5-6x fewer bytes than fp16 at `lossless`, each
block checked by its XXH3-64 on load. LMCache stores and returns the whole slot it
sized with estimate_serialized_size (the resident bound of the blocks), so the bytes
after the container are zero-filled and checked to be zero. A chunk that fails a check raises, and LMCache
marks the load failed instead of handing out its bytes.

    import nexusquant.lmcache_serde as nqs
    nqs.register()   # serde type "nexusquant" in LMCache's registry
    # L2 adapter spec: {"serde": {"type": "nexusquant", "kwargs": {"num_kv_heads": 8}}}

A chunk does not know its tokens' positions, so keys are quantised with the RoPE they
carry (rope mode "none": returned exactly as rotated) and, by default, no tokens are
kept in fp16 (a per-chunk fp16 window would cost more than it does per sequence).
"""
from __future__ import annotations

import struct

import numpy as np

from .core import Context, RopeSpec

CONTAINER_MAGIC = b"NQKC"
SERDE_NAME = "nexusquant"
_ARCHIVE_OVERHEAD = 16 + 128 + 7 * 24 + 8  # prefix + header + full section table + checksum


class ChunkCorrupt(ValueError):
    """A stored chunk failed a check; nothing of it was written to the destination."""


def _kv_shape(shape, num_kv_heads):
    if len(shape) != 4 or int(shape[0]) != 2:
        raise ValueError(f"nexusquant serde expects [2, layers, tokens, hidden], got {tuple(shape)}")
    layers, tokens, hidden = int(shape[1]), int(shape[2]), int(shape[3])
    if hidden % num_kv_heads:
        raise ValueError(f"hidden {hidden} is not a multiple of num_kv_heads {num_kv_heads}")
    return layers, tokens, hidden // num_kv_heads


class _Codec:
    def __init__(self, num_kv_heads: int, preset: str = "lossless", fp16_sinks: int = 0, fp16_window: int = 0,
                 zstd_level: int = 3, **overrides):
        self.num_kv_heads = int(num_kv_heads)
        self.settings = dict(preset=preset, fp16_sinks=int(fp16_sinks), fp16_window=int(fp16_window),
                             zstd_level=int(zstd_level), rope=RopeSpec(mode="none"), **overrides)
        self._ctx = {}

    def ctx(self, head_dim: int) -> Context:
        if head_dim not in self._ctx:
            self._ctx[head_dim] = Context(head_dim, self.num_kv_heads, **self.settings)
        return self._ctx[head_dim]

    @staticmethod
    def _heads_view(t, layer: int, which: int, heads: int, head_dim: int):
        """[heads, tokens, head_dim] strided view of one layer's K (0) or V (1)."""
        x = t[which, layer]
        return x.view(x.shape[0], heads, head_dim).permute(1, 0, 2)

    def encode(self, t) -> bytes:
        layers, tokens, head_dim = _kv_shape(t.shape, self.num_kv_heads)
        if t.device.type != "cpu":
            t = t.cpu()  # the library's CPU backend; a CUDA build could take device pointers
        ctx = self.ctx(head_dim)
        parts = [CONTAINER_MAGIC + struct.pack("<HHII", 1, 0, layers, 0)]
        for layer in range(layers):
            k = self._heads_view(t, layer, 0, self.num_kv_heads, head_dim)
            v = self._heads_view(t, layer, 1, self.num_kv_heads, head_dim)
            arc = ctx.compress(k, v, layer=layer).serialize()
            parts.append(struct.pack("<Q", len(arc)))
            parts.append(arc)
        return b"".join(parts)

    def bound(self, shape) -> int:
        layers, tokens, head_dim = _kv_shape(shape, self.num_kv_heads)
        per_layer = self.ctx(head_dim).estimate_bytes(1, tokens) + _ARCHIVE_OVERHEAD + 8
        return 16 + layers * per_layer

    def decode_into(self, data: np.ndarray, dst) -> None:
        layers, tokens, head_dim = _kv_shape(dst.shape, self.num_kv_heads)
        ctx = self.ctx(head_dim)
        if data.size < 16 or data[:4].tobytes() != CONTAINER_MAGIC:
            raise ChunkCorrupt("nexusquant chunk: bad magic (not an nq container)")
        version, flags, n, _ = struct.unpack("<HHII", data[4:16].tobytes())
        if version != 1 or flags != 0 or n != layers:
            raise ChunkCorrupt(f"nexusquant chunk: version {version}, flags {flags}, {n} blocks for {layers} layers")
        blocks, off = [], 16
        for layer in range(layers):  # every block is checked before anything is written
            if off + 8 > data.size:
                raise ChunkCorrupt(f"nexusquant chunk: truncated before block {layer}")
            ln = struct.unpack("<Q", data[off:off + 8].tobytes())[0]
            off += 8
            if ln > data.size - off:
                raise ChunkCorrupt(f"nexusquant chunk: block {layer} runs past the end")
            try:
                b = ctx.deserialize(data[off:off + ln].tobytes())
            except Exception as e:
                raise ChunkCorrupt(f"nexusquant chunk: block {layer}: {e}") from e
            info = b.info()
            if info["layer"] != layer or info["tokens_kept"] != tokens or info["tokens_in"] != tokens:
                raise ChunkCorrupt(f"nexusquant chunk: block {layer} holds layer {info['layer']}, "
                                   f"{info['tokens_kept']} of {info['tokens_in']} tokens; expected {tokens}")
            blocks.append(b)
            off += ln
        # LMCache hands back the whole slot it allocated from estimate_serialized_size;
        # the serializer zero-fills the slack, so anything else after the blocks is damage.
        if off != data.size and np.any(data[off:]):
            raise ChunkCorrupt(f"nexusquant chunk: non-zero bytes after the last block (at {off})")
        host = dst if dst.device.type == "cpu" else dst.new_empty(dst.shape, device="cpu")
        for layer, b in enumerate(blocks):
            ctx.decode(b, out=(self._heads_view(host, layer, 0, self.num_kv_heads, head_dim),
                               self._heads_view(host, layer, 1, self.num_kv_heads, head_dim)))
        if host is not dst:
            dst.copy_(host)


def _classes():
    """The Serializer / Deserializer subclasses (built lazily: lmcache is optional)."""
    import torch
    from lmcache.v1.distributed.serde.base import Deserializer, Serializer

    class NexusQuantSerializer(Serializer):
        def __init__(self, **kw):
            self.codec = _Codec(**kw)

        def serialize(self, src, dst, key) -> int:
            data = self.codec.encode(src.tensor)
            out = dst.tensor.view(torch.uint8).reshape(-1)
            if len(data) > out.numel():
                raise ValueError(f"nexusquant serde: {len(data)} bytes exceed the {out.numel()}-byte buffer")
            out[: len(data)].copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            out[len(data):].zero_()  # the slot's slack: the loader checks it is zero
            return len(data)

        def estimate_serialized_size(self, layout_desc) -> int:
            if len(layout_desc.shapes) != 1:
                raise ValueError("nexusquant serde handles one KV group per object")
            return self.codec.bound(layout_desc.shapes[0])

    class NexusQuantDeserializer(Deserializer):
        def __init__(self, **kw):
            self.codec = _Codec(**kw)

        def deserialize(self, src, dst, key) -> None:
            data = src.tensor.view(torch.uint8).reshape(-1).cpu().numpy()
            self.codec.decode_into(data, dst.tensor)

    return NexusQuantSerializer, NexusQuantDeserializer


def create(kwargs: dict):
    """The factory LMCache calls with the adapter spec's serde kwargs."""
    from lmcache.v1.distributed.serde.async_processor import AsyncSerdeProcessor

    kw = dict(kwargs)
    if "num_kv_heads" not in kw:
        raise ValueError("nexusquant serde: kwargs need num_kv_heads (the model's KV heads)")
    workers = int(kw.pop("max_workers", 1))
    ser, de = _classes()
    return AsyncSerdeProcessor(ser(**kw), de(**kw), max_workers=workers)


def register() -> str:
    """Registers the serde under "nexusquant" (once) and returns the name."""
    from lmcache.v1.distributed.serde.factory import get_registered_serde_types, register_serde_factory

    if SERDE_NAME not in get_registered_serde_types():
        register_serde_factory(SERDE_NAME, create)
    return SERDE_NAME
