"""Blocks and sequences over torch.distributed point-to-point messages.

A transfer is two messages from `src` to `dst` on one process group: the envelope
(64 bytes) and the body (frames.py). NCCL needs CUDA tensors, gloo takes host
tensors; the helpers below pick the device from the group's backend, so the same calls
work between GPUs (NCCL) and between hosts or CPU processes (gloo).

Both forms are checked on arrival before anything is deserialised or decoded:
- archive: frame digests, then nq_block_deserialize (which checks its own XXH3-64);
- resident: frame digests, then a stored archive around each image (images.py), so
  the library validates every header field.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence as Seq

import numpy as np

from .. import _lib as L
from ..core import Block, Context, MEMORY_HOST, NexusQuantError, Sequence, _check
from . import frames
from .frames import TransferCorrupt
from .images import block_from_image, copy_block, host_image

DEFAULT_MAX_BYTES = 1 << 40


def _dist():
    import torch.distributed as dist

    return dist


def _wire_device(group=None):
    """The device whose tensors the group's backend moves: cuda:N for NCCL, cpu otherwise."""
    import torch

    if _dist().get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_wire(a: np.ndarray, device):
    import torch

    t = torch.from_numpy(a)
    return t if device.type == "cpu" else t.to(device, non_blocking=False)


@dataclass
class TransferStats:
    """Bytes and seconds of one transfer, as the calling rank saw them."""
    items: int = 0
    payload_bytes: int = 0   # the items themselves
    wire_bytes: int = 0      # envelope + table + items + padding: every byte sent
    pack_s: float = 0.0      # serialising / copying images + digests (sender)
    wire_s: float = 0.0      # inside send/recv
    verify_s: float = 0.0    # envelope + digests (receiver)
    unpack_s: float = 0.0    # deserialising into blocks (receiver)
    tag: int = 0
    extra: dict = field(default_factory=dict)


class PendingSend:
    """Keeps the tensors of an asynchronous send alive until wait()."""

    def __init__(self, works, tensors, stats):
        self._works, self._tensors, self.stats = works, tensors, stats

    def wait(self) -> TransferStats:
        for w in self._works:
            w.wait()
        self._works, self._tensors = [], []
        return self.stats


def _items_of(blocks: Seq[Block], form: str, ctx: Optional[Context]):
    """[(bytes, layer)] and their digests (None = compute) for a list of blocks.

    Device blocks are staged through host memory: digests and archives are computed on
    the host (a device-side digest would let resident images go straight to NCCL)."""
    items, digests = [], []
    staged = [b if b.info()["memory"] == MEMORY_HOST else copy_block(ctx or b._ctx, b, MEMORY_HOST) for b in blocks]
    if any(h is not b for h, b in zip(staged, blocks)):
        import torch  # device blocks: the copies were enqueued on the default stream

        torch.cuda.synchronize()
    for b, host in zip(blocks, staged):
        info = b.info()
        if form == "archive":
            items.append((np.frombuffer(host.serialize(), np.uint8), info["layer"]))
            digests.append(None)
        else:
            items.append((host_image(host), info["layer"]))
            digests.append(host.digest())  # XXH3-64 of the resident image, from the library
    if any(d is None for d in digests):
        digests = None
    return items, digests


def send_blocks(blocks: Seq[Block], dst: int, *, form: str = "archive", group=None, tag: int = 0,
                ctx: Optional[Context] = None, async_op: bool = False, corrupt_item: Optional[int] = None):
    """Sends blocks to rank `dst` as one transfer; returns TransferStats (or PendingSend).

    form: "archive" (smallest bytes: hosts) or "resident" (images as they are: GPUs).
    corrupt_item: flip one byte of that item after its digest is taken (tests, demos).
    """
    dist = _dist()
    t0 = time.perf_counter()
    items, digests = _items_of(blocks, form, ctx)
    env, body = frames.pack(items, form, tag, digests)
    if corrupt_item is not None:
        off = frames.table_bytes(len(items)) + sum((x[0].size + 15) & ~15 for x in items[:corrupt_item])
        body[off + items[corrupt_item][0].size // 2] ^= 0x20
    device = _wire_device(group)
    te, tb = _to_wire(env, device), _to_wire(body, device)
    t1 = time.perf_counter()
    stats = TransferStats(len(items), sum(x[0].size for x in items), env.size + body.size, pack_s=t1 - t0, tag=tag)
    if async_op:
        return PendingSend([dist.isend(te, dst, group=group), dist.isend(tb, dst, group=group)], [te, tb], stats)
    dist.send(te, dst, group=group)
    dist.send(tb, dst, group=group)
    stats.wire_s = time.perf_counter() - t1
    return stats


def recv_transfer(src: int, *, group=None, max_bytes: int = DEFAULT_MAX_BYTES):
    """Receives and verifies one transfer: ([(item bytes, layer)], form name, TransferStats)."""
    import torch

    dist = _dist()
    device = _wire_device(group)
    t0 = time.perf_counter()
    env = torch.empty(frames.ENVELOPE_BYTES, dtype=torch.uint8, device=device)
    dist.recv(env, src, group=group)
    t1 = time.perf_counter()
    e = frames.parse_envelope(env.cpu().numpy(), max_bytes)
    body = torch.empty(e.body_bytes, dtype=torch.uint8, device=device)
    t2 = time.perf_counter()
    dist.recv(body, src, group=group)
    t3 = time.perf_counter()
    # Verification reads the body on the host (a device body is copied once: it is the
    # compressed size). A digest failure raises here, before anything is decoded.
    items = frames.unpack(e, body.cpu().numpy())
    t4 = time.perf_counter()
    stats = TransferStats(e.count, sum(x[0].size for x in items), frames.ENVELOPE_BYTES + e.body_bytes,
                          wire_s=(t1 - t0) + (t3 - t2), verify_s=(t2 - t1) + (t4 - t3), tag=e.tag)
    return [(a, layer) for a, layer, _ in items], frames.FORM_NAMES[e.form], stats


def recv_blocks(ctx: Context, src: int, *, group=None, memory: int = MEMORY_HOST, device: int = 0,
                max_bytes: int = DEFAULT_MAX_BYTES):
    """Receives one transfer from `src` and returns ([Block], TransferStats).

    Raises TransferCorrupt when a check fails; no block of that transfer is returned.
    memory=MEMORY_CUDA moves the blocks to `device` (needs a library built with CUDA).
    """
    items, form, stats = recv_transfer(src, group=group, max_bytes=max_bytes)
    t0 = time.perf_counter()
    blocks = []
    for i, (data, layer) in enumerate(items):
        try:
            b = ctx.deserialize(data.tobytes()) if form == "archive" else block_from_image(ctx, data)
        except NexusQuantError as err:
            raise TransferCorrupt(f"item {i} (layer {layer}): the library refused it: {err}") from err
        if b.info()["layer"] != layer:
            raise TransferCorrupt(f"item {i}: block layer {b.info()['layer']} != table layer {layer}")
        blocks.append(b if memory == MEMORY_HOST else copy_block(ctx, b, memory, device))
    stats.unpack_s = time.perf_counter() - t0
    stats.extra["form"] = form
    return blocks, stats


def sequence_blocks(seq: Sequence) -> List[Block]:
    """The blocks of a sequence, borrowed (valid while the sequence lives)."""
    lib = L.lib()
    out = []
    for i in range(seq.num_blocks):
        h = lib.nq_sequence_block(seq._h, i)
        if not h:
            raise ValueError(f"sequence block {i} is missing")
        out.append(Block(h, seq._ctx, owned=False))
    return out


def send_sequence(seq: Sequence, dst: int, **kw):
    """Sends every block of a sequence as one transfer (see send_blocks)."""
    return send_blocks(sequence_blocks(seq), dst, ctx=seq._ctx, **kw)


def recv_sequence(ctx: Context, src: int, *, layer: Optional[int] = None, **kw):
    """Receives a transfer sent by send_sequence into a new Sequence of `ctx`."""
    blocks, stats = recv_blocks(ctx, src, **kw)
    seq = ctx.sequence(blocks[0].info()["layer"] if layer is None and blocks else (layer or 0))
    for b in blocks:
        _check(L.lib().nq_sequence_append_block(seq._h, b.handle))
        b._owned = False  # the sequence frees it now
    return seq, stats
