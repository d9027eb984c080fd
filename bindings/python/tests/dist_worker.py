"""One rank of the two-process gloo tests (test_distributed.py starts two of these).

usage: dist_worker.py RANK INIT_FILE OUT_JSON
Rank 0 sends, rank 1 receives and writes what it checked to OUT_JSON.
"""
import json
import sys

import numpy as np
import torch.distributed as dist

from nexusquant.core import Context
from nexusquant.distributed import TransferCorrupt, recv_blocks, recv_sequence, send_blocks, send_sequence


def blocks_and_sequence(ctx):
    rng = np.random.default_rng(7)
    blocks = []
    for layer in range(3):
        k = rng.standard_normal((2, 96 + 40 * layer, 64)).astype(np.float16)
        k[:, :, 3] *= 9  # an outlier channel
        v = rng.standard_normal(k.shape).astype(np.float16)
        blocks.append(ctx.compress(k, v, layer=layer, start_position=5))
    seq = ctx.sequence(layer=2)
    pos = 0
    for n in (130, 16, 16):
        k = rng.standard_normal((2, n, 64)).astype(np.float32)
        v = rng.standard_normal((2, n, 64)).astype(np.float32)
        seq.append(k, v, start_position=pos)
        pos += n
    return blocks, seq


def main():
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
    ctx = Context(64, 2, preset="high")  # evicts: per-head positions travel too
    blocks, seq = blocks_and_sequence(ctx)  # both ranks build them: rank 1 to compare
    report = {}
    if rank == 0:
        for form in ("archive", "resident"):
            send_blocks(blocks, 1, form=form, tag=11)
            send_sequence(seq, 1, form=form)
        send_blocks(blocks, 1, form="archive", corrupt_item=1)
        send_blocks(blocks, 1, form="resident", corrupt_item=2)
        send_blocks(blocks[:1], 1, form="resident", tag=99)  # the channel still works after refusals
    else:
        for form in ("archive", "resident"):
            got, stats = recv_blocks(ctx, 0)
            report[form] = {
                "form": stats.extra["form"], "tag": stats.tag,
                "digests_equal": [g.digest() == b.digest() for g, b in zip(got, blocks)],
                "bytes_equal": [g.resident_bytes() == b.resident_bytes() for g, b in zip(got, blocks)],
                "decoded_equal": [bool(np.array_equal(ctx.decode(g)[0], ctx.decode(b)[0]))
                                  for g, b in zip(got, blocks)],
                "count": len(got)}
            s2, _ = recv_sequence(ctx, 0)
            report[form + "_sequence"] = {
                "totals_equal": s2.totals() == seq.totals(), "blocks": s2.num_blocks,
                "decoded_equal": bool(np.array_equal(s2.decode()[1], seq.decode()[1])),
                "positions_equal": bool(np.array_equal(s2.positions(1), seq.positions(1)))}
        for form in ("archive", "resident"):
            try:
                recv_blocks(ctx, 0)
                report["corrupt_" + form] = "accepted"
            except TransferCorrupt as e:
                report["corrupt_" + form] = str(e)
        got, stats = recv_blocks(ctx, 0)
        report["after"] = {"tag": stats.tag, "ok": got[0].digest() == blocks[0].digest()}
        with open(out, "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
