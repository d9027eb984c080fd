"""torch SDPA (fp16) on the shapes bench_attention measured, in the same run.

    python3 bench/gpu/bench_sdpa.py attention.jsonl

Reads bench_attention's JSON lines, times torch.nn.functional.scaled_dot_product_attention
over an uncompressed fp16 cache of the same shape (one query token, 32 query heads,
8 KV heads, head_dim 128) as a replayed CUDA graph (median of events), several ways:
  gqa        SDPA(q [B,32,1,D], k/v [B,8,T,D], enable_gqa=True), backend chosen by torch
  gqa-flash  the same, flash backend forced
  grouped    q regrouped as [B,8,4,D] (4 query rows per KV head, no mask): plain
             SDPA that reads each KV head once
and prints one table with our time, the best SDPA time, their ratio and the fraction
of the floor (compressed bytes at copy speed).
"""
import json
import sys

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # older torch
    SDPBackend = sdpa_kernel = None


def timed_us(fn, reps=50):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    run = fn
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    except Exception as e:  # noqa: BLE001 - fall back to eager timing
        print(f"  (graph capture failed: {e}; timing eagerly)", file=sys.stderr)
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def sdpa_times(tokens, batch, hq=32, hk=8, d=128):
    torch.manual_seed(0)
    q = torch.randn(batch, hq, 1, d, device="cuda", dtype=torch.float16)
    k = torch.randn(batch, hk, tokens, d, device="cuda", dtype=torch.float16)
    v = torch.randn(batch, hk, tokens, d, device="cuda", dtype=torch.float16)
    qg = q.view(batch, hk, hq // hk, d)
    out = {}
    out["gqa"] = timed_us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    if sdpa_kernel is not None:
        for name, be in (("gqa-flash", SDPBackend.FLASH_ATTENTION), ("gqa-efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(be):
                    out[name] = timed_us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
            except Exception as e:  # noqa: BLE001
                print(f"  {name}: {e}", file=sys.stderr)
    out["grouped"] = timed_us(lambda: F.scaled_dot_product_attention(qg, k, v))
    return out


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    cache = {}
    print(f"{'tokens':>7} {'batch':>5} {'rope':>6} | {'ours us':>8} {'floor us':>8} {'of floor':>8} | "
          f"{'sdpa gqa':>8} {'best sdpa':>9} {'(which)':>13} | {'best/ours':>9} {'rel err':>8}")
    for r in rows:
        key = (r["tokens"], r["batch"])
        if key not in cache:
            cache[key] = sdpa_times(*key)
            print("  sdpa", key, {k: round(v, 1) for k, v in cache[key].items()}, file=sys.stderr)
        t = cache[key]
        best = min(t, key=t.get)
        print(f"{r['tokens']:>7} {r['batch']:>5} {r['rope']:>6} | {r['fused_us']:>8.1f} {r['floor_us']:>8.1f} "
              f"{r['floor_fraction']:>8.2f} | {t['gqa']:>8.1f} {t[best]:>9.1f} {best:>13} | "
              f"{t[best] / r['fused_us']:>9.2f} {r['max_rel_err']:>8.2g}")


if __name__ == "__main__":
    main()
