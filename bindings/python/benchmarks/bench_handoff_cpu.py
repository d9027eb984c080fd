"""CPU seconds of each step of a handoff, per fp16 byte of cache (load-independent).

One Llama-3-8B layer (8 KV heads x TOKENS x 128, fp16, RoPE theta 500000) at `lossless`:
compress, the sender's packing for each wire form, the receiver's verification and
rebuild for each form, and decode. Reported as fp16 GB per CPU-second (process time, so
other jobs on the machine do not count), the unit BENCHMARKS.md uses for the CPU backend.

    python benchmarks/bench_handoff_cpu.py [--tokens 2048] [--repeats 5] [--json]
"""
import argparse
import json
import statistics
import time

import numpy as np

from nexusquant.core import Context, RopeSpec
from nexusquant.distributed import frames, synthetic
from nexusquant.distributed.images import block_from_image, host_image


def cpu_time(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        out.append(time.process_time() - t)
    return statistics.median(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    m = synthetic.LLAMA3_8B
    ctx = Context(m["head_dim"], m["kv_heads"], m["q_heads"], preset="lossless",
                  rope=RopeSpec(theta=m["rope_theta"]), num_threads=1)
    k, v = synthetic.layer_kv(np.random.default_rng(0), m["kv_heads"], a.tokens, m["head_dim"], m["rope_theta"])
    fp16 = k.nbytes + v.nbytes
    blk = ctx.compress(k, v)
    arc = blk.serialize()
    img = host_image(blk)
    pack_a = frames.pack([(np.frombuffer(arc, np.uint8), 0)], "archive")
    pack_r = frames.pack([(img, 0)], "resident", digests=[blk.digest()])
    out = np.empty_like(k), np.empty_like(v)
    steps = {
        "compress": lambda: ctx.compress(k, v),
        "send archive: serialize + frame": lambda: frames.pack([(np.frombuffer(blk.serialize(), np.uint8), 0)],
                                                               "archive"),
        "send resident: copy image + frame": lambda: frames.pack([(host_image(blk), 0)], "resident",
                                                                 digests=[blk.digest()]),
        "receive archive: verify + deserialize": lambda: [ctx.deserialize(x[0].tobytes()) for x in frames.unpack(
            frames.parse_envelope(pack_a[0], 1 << 40), pack_a[1])],
        "receive resident: verify + wrap + deserialize": lambda: [block_from_image(ctx, x[0]) for x in frames.unpack(
            frames.parse_envelope(pack_r[0], 1 << 40), pack_r[1])],
        "decode to fp16": lambda: ctx.decode(blk, dtype="float16", out=out),
    }
    res = {"tokens": a.tokens, "fp16_bytes": fp16, "archive_bytes": len(arc), "resident_bytes": int(img.size),
           "wire_ratio_archive": fp16 / (pack_a[0].size + pack_a[1].size),
           "wire_ratio_resident": fp16 / (pack_r[0].size + pack_r[1].size), "isa": ctx.cpu_isa,
           "gb_per_cpu_s": {}}
    for name, fn in steps.items():
        fn()
        res["gb_per_cpu_s"][name] = fp16 / cpu_time(fn, a.repeats) / 1e9
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{a.tokens} tokens, {fp16 / 1e6:.1f} MB fp16; wire ratio archive {res['wire_ratio_archive']:.2f}x, "
              f"resident {res['wire_ratio_resident']:.2f}x ({res['isa']})")
        for name, g in res["gb_per_cpu_s"].items():
            print(f"  {name:48s} {g:7.2f} fp16 GB per CPU-second")


if __name__ == "__main__":
    main()
