"""Prefill-to-decode handoff over torch.distributed: our blocks against fp16 pages.

Rank 0 (the prefill worker) holds a Llama-3-8B-shaped cache; rank 1 (the decode
worker) needs it to run the first decode step. Three timed rounds move the same cache
over the same process group, layer by layer (rank 1 attends over layer l as soon as it
has it):
  fp16          the pages as fp16 tensors (no framing, no checksum: the cheapest fp16 path)
  ours          blocks compressed before the handoff (an engine that keeps its cache
                compressed), framed, verified, rebuilt and decoded (or attended) on rank 1
  ours+compress the same, with compression inside the timed path
Time to the first decode step is measured on rank 1 from the barrier that starts a
round to the last layer's attention output; the handoff time is that minus the
attention itself (when the decode worker holds a usable cache). A 64 MiB probe
message first measures what the link carries on its own. A fourth transfer is corrupted on purpose
and must be refused.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..core import MEMORY_CUDA, Context, NexusQuantError, RopeSpec
from . import synthetic
from .frames import TransferCorrupt
from .images import copy_block
from .transport import recv_blocks, send_blocks


PROBE_BYTES = 64 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _attention(q, k, v):
    """One decode step of GQA attention: q [Q,1,D], k/v [H,N,D] torch -> [Q,D] float32."""
    import torch

    hq, hk = q.shape[0], k.shape[0]
    qg = q.float().reshape(hk, hq // hk, q.shape[-1])
    s = torch.einsum("hgd,hnd->hgn", qg, k.float()) / (q.shape[-1] ** 0.5)
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hgn,hnd->hgd", p, v.float()).reshape(hq, -1)


def _attend_blocks(ctx, q, block, torch_dev, kbuf, vbuf, times):
    """The first decode step over a received block: attention over the compressed block
    when the binding has it (Context.attend), else decode to fp16 and attend with torch."""
    import torch

    if hasattr(Context, "attend") and not times.get("attend_error"):
        try:
            t = time.perf_counter()
            out, _lse = ctx.attend([block], q.float().cpu().numpy())
            times["attention_s"] += time.perf_counter() - t
            return torch.as_tensor(np.asarray(out), dtype=torch.float32).reshape(q.shape[0], -1).to(q.device), "attend"
        except (TypeError, ValueError) as e:  # q's shape does not fit the context: decode instead
            times["attend_error"] = f"{type(e).__name__}: {e}"
    t = time.perf_counter()
    k = v = None
    if torch_dev.type == "cuda" and times.get("decode_on") != "cpu":
        try:  # the GPU backend: copy the block to the device and decode there
            dev_block = copy_block(ctx, block, MEMORY_CUDA, torch_dev.index or 0)
            k = torch.empty(kbuf.shape, dtype=torch.float16, device=torch_dev)
            v = torch.empty_like(k)
            ctx.decode(dev_block, dtype="float16", out=(k, v))
            times["decode_on"] = "cuda"
        except NexusQuantError as e:  # a library built without CUDA
            times["decode_on"], times["decode_on_why"] = "cpu", str(e)
            k = v = None
    if k is None:
        ctx.decode(block, dtype="float16", out=(kbuf, vbuf))
        k, v = (kbuf, vbuf) if torch_dev.type == "cpu" else (kbuf.to(torch_dev), vbuf.to(torch_dev))
    if torch_dev.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    o = _attention(q, k, v)
    if torch_dev.type == "cuda":
        torch.cuda.synchronize()
    times["decode_s"] += t1 - t
    times["attention_s"] += time.perf_counter() - t1
    return o, "decode"


def link_model(fp16_bytes: int, wire_bytes: int, fp16_cpu_s: float, breakdown: dict, pack_s: float,
               compress_s: float) -> dict:
    """A MODEL, not a measurement: time to the first decode step on a link of B bit/s as
    the measured non-wire costs plus bytes / B, with no overlap between them.

    fp16: attention over received pages. ours: sender packing (serialise or copy the
    images) + verify + rebuild + decode + attention; "+compress" adds compression.
    Break-even is the bandwidth above which fp16 pages arrive sooner.
    """
    ours_cpu = pack_s + sum(breakdown[k] for k in ("verify_s", "unpack_s", "decode_s", "attention_s"))
    out = {"note": "model: measured costs + bytes/bandwidth, no overlap", "fp16_cpu_s": fp16_cpu_s,
           "ours_cpu_s": ours_cpu, "compress_s": compress_s, "gbit_s": {}}
    for g in (10, 25, 100, 400):
        bps = g * 1e9 / 8
        f = fp16_cpu_s + fp16_bytes / bps
        o = ours_cpu + wire_bytes / bps
        out["gbit_s"][str(g)] = {"fp16_s": f, "ours_s": o, "ours_compress_s": o + compress_s,
                                 "speedup": f / o, "speedup_with_compress": f / (o + compress_s)}
    for key, extra in (("break_even_gbit_s", 0.0), ("break_even_with_compress_gbit_s", compress_s)):
        d = ours_cpu + extra - fp16_cpu_s
        out[key] = (fp16_bytes - wire_bytes) * 8 / d / 1e9 if d > 0 else None  # None: ours wins at any speed
    return out


def run_rank(a) -> dict:
    import torch
    import torch.distributed as dist

    rank = a.rank
    if a.backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(a.backend, init_method=a.init_method, rank=rank, world_size=2)
    dev = torch.device("cuda", rank) if a.backend == "nccl" else torch.device("cpu")
    m = dict(synthetic.LLAMA3_8B, layers=a.layers)
    L, H, Q, D, N = m["layers"], m["kv_heads"], m["q_heads"], m["head_dim"], a.tokens
    ctx = Context(D, H, Q, preset=a.preset, rope=RopeSpec(theta=m["rope_theta"]))
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    res = {"rounds": {"fp16": [], "ours": [], "ours_compress": []}}

    if rank == 0:
        rng = np.random.default_rng(a.seed)
        cache = [synthetic.layer_kv(rng, H, N, D, m["rope_theta"]) for _ in range(L)]
        pages = [(torch.from_numpy(k).to(dev), torch.from_numpy(v).to(dev)) for k, v in cache]
        src = cache
        compress_on = "cpu"
        if dev.type == "cuda":  # compress the device pages when the library has the CUDA backend
            try:
                ctx.compress(*pages[0], layer=0)
                src, compress_on = pages, "cuda"
            except NexusQuantError as e:
                compress_on = f"cpu ({e})"
        sync()
        t = time.perf_counter()
        blocks = [ctx.compress(k, v, layer=i) for i, (k, v) in enumerate(src)]
        sync()
        compress_s = time.perf_counter() - t
        probe = torch.zeros(PROBE_BYTES, dtype=torch.uint8, device=dev)
        for _ in range(2):
            dist.barrier()
            dist.send(probe, 1)
        wire = 0
        for r in range(a.repeats + 1):  # round 0 warms up and is not reported
            dist.barrier()
            works = [w for kt, vt in pages for w in (dist.isend(kt, 1), dist.isend(vt, 1))]
            for w in works:
                w.wait()
            for mode in ("ours", "ours_compress"):
                dist.barrier()
                pend = []
                for i in range(L):
                    b = ctx.compress(*src[i], layer=i) if mode == "ours_compress" else blocks[i]
                    pend.append(send_blocks([b], 1, form=a.form, async_op=True))
                stats = [p.wait() for p in pend]
                wire = sum(s.wire_bytes for s in stats)
                pack_s = sum(s.pack_s for s in stats)
        refused = send_blocks([blocks[0]], 1, form=a.form, corrupt_item=0)
        send_blocks([blocks[0]], 1, form=a.form)
        info = {"compress_s": compress_s, "compress_on": compress_on, "pack_s_last": pack_s, "wire_bytes": wire,
                "resident_bytes": sum(b.nbytes for b in blocks),
                "original_bytes": sum(b.info()["original_bytes"] for b in blocks), "corrupt_sent": refused.items}
        dist.send_object_list([info], dst=1) if hasattr(dist, "send_object_list") else None
    else:
        rng = np.random.default_rng(a.seed + 1)
        qs = [torch.from_numpy(q).to(dev) for q in synthetic.queries(rng, L, Q, D, N, m["rope_theta"])]
        kp = [torch.empty((H, N, D), dtype=torch.float16, device=dev) for _ in range(L)]
        vp = [torch.empty((H, N, D), dtype=torch.float16, device=dev) for _ in range(L)]
        kbuf = torch.empty((H, N, D), dtype=torch.float16)
        vbuf = torch.empty((H, N, D), dtype=torch.float16)
        ref = ours_out = None
        parts, path, verified = [], "decode", True
        probe = torch.empty(PROBE_BYTES, dtype=torch.uint8, device=dev)
        for _ in range(2):  # the second one is timed: what the link carries, alone
            dist.barrier()
            t0 = time.perf_counter()
            dist.recv(probe, 0)
            sync()
            probe_s = time.perf_counter() - t0
        fp16_attn = []
        for r in range(a.repeats + 1):  # round 0 warms up and is not reported
            dist.barrier()
            t0 = time.perf_counter()
            outs, attn = [], 0.0
            for i in range(L):
                w1, w2 = dist.irecv(kp[i], 0), dist.irecv(vp[i], 0)
                w1.wait()
                w2.wait()
                t1 = time.perf_counter()
                outs.append(_attention(qs[i], kp[i], vp[i]))
                sync()
                attn += time.perf_counter() - t1
            sync()
            if r:
                res["rounds"]["fp16"].append(time.perf_counter() - t0)
                fp16_attn.append(attn)
            ref = torch.stack(outs).cpu()
            for mode in ("ours", "ours_compress"):
                dist.barrier()
                t0 = time.perf_counter()
                times = {"wire_s": 0.0, "verify_s": 0.0, "unpack_s": 0.0, "decode_s": 0.0, "attention_s": 0.0}
                outs = []
                for i in range(L):
                    got, st = recv_blocks(ctx, 0)
                    times["wire_s"] += st.wire_s
                    times["verify_s"] += st.verify_s
                    times["unpack_s"] += st.unpack_s
                    verified &= len(got) == 1 and got[0].info()["layer"] == i
                    o, path = _attend_blocks(ctx, qs[i], got[0], dev, kbuf, vbuf, times)
                    outs.append(o)
                sync()
                if not r:
                    continue
                res["rounds"][mode].append(time.perf_counter() - t0)
                if mode == "ours":
                    parts.append(times)
                    ours_out = torch.stack(outs).cpu()
        try:
            recv_blocks(ctx, 0)
            refused, err = False, "accepted"
        except TransferCorrupt as e:
            refused, err = True, str(e)
        got, _ = recv_blocks(ctx, 0)  # the channel is still in step after a refusal
        verified &= len(got) == 1
        info = [None]
        if hasattr(dist, "recv_object_list"):
            dist.recv_object_list(info, src=0)
        info = info[0]
        med = {k: statistics.median(v) for k, v in res["rounds"].items()}
        fp16_bpt = 2 * L * H * D * 2
        breakdown = {k: statistics.median(p[k] for p in parts) for k in parts[0]
                     if isinstance(parts[0][k], float)}
        model = link_model(fp16_bpt * N, info["wire_bytes"], statistics.median(fp16_attn),
                           breakdown, info["pack_s_last"], info["compress_s"])
        res.update({
            "backend": a.backend, "form": a.form, "world_size": 2, "tokens": N, "preset": a.preset,
            "model_shape": m, "repeats": a.repeats, "link": a.link or "unthrottled",
            "fp16_bytes_per_token": fp16_bpt,
            "wire_bytes_per_token": info["wire_bytes"] / N,
            "resident_bytes_per_token": info["resident_bytes"] / N,
            "wire_ratio": fp16_bpt * N / info["wire_bytes"],
            "verified": bool(verified), "corrupt_refused": refused, "corrupt_error": err,
            "decode_path": path, "attend_error": parts[-1].get("attend_error"),
            "compress_on": info["compress_on"], "decode_on": parts[-1].get("decode_on", "cpu"),
            "decode_on_why": parts[-1].get("decode_on_why"),
            "ttfd_fp16_s": med["fp16"], "ttfd_ours_s": med["ours"], "ttfd_ours_compress_s": med["ours_compress"],
            "speedup": med["fp16"] / med["ours"], "speedup_with_compress": med["fp16"] / med["ours_compress"],
            "link_probe_gbit_s": PROBE_BYTES * 8 / probe_s / 1e9,
            "handoff_fp16_s": med["fp16"] - statistics.median(fp16_attn),
            "handoff_ours_s": med["ours"] - breakdown["attention_s"],
            "handoff_speedup": (med["fp16"] - statistics.median(fp16_attn)) / (med["ours"] - breakdown["attention_s"]),
            "receiver_breakdown_s": breakdown, "fp16_attention_s": statistics.median(fp16_attn),
            "link_model": model,
            "sender_compress_s": info["compress_s"], "sender_pack_s": info["pack_s_last"],
            "attention_rel_error": float(torch.linalg.norm(ours_out - ref) / torch.linalg.norm(ref)),
        })
    dist.barrier()
    dist.destroy_process_group()
    return res


def launch(a) -> dict:
    """Runs both ranks as subprocesses of this interpreter and returns rank 1's result."""
    init = a.init_method or f"tcp://127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rank1.json")
        base = [sys.executable, "-m", "nexusquant.distributed", "--demo", "--backend", a.backend,
                "--world-size", "2", "--tokens", str(a.tokens), "--preset", a.preset, "--form", a.form,
                "--layers", str(a.layers), "--repeats", str(a.repeats), "--seed", str(a.seed),
                "--init-method", init] + (["--link", a.link] if a.link else [])
        procs = [subprocess.Popen(base + ["--rank", str(r)] + (["--out", out] if r == 1 else [])) for r in (0, 1)]
        rcs = [p.wait() for p in procs]
        if any(rcs):
            raise SystemExit(f"demo ranks exited with {rcs}")
        with open(out) as f:
            return json.load(f)


def main(a) -> int:
    if a.world_size != 2:
        raise SystemExit("--world-size: the handoff demo has exactly two ranks (prefill, decode)")
    if a.repeats < 1 or a.tokens < 1 or a.layers < 1:
        raise SystemExit("--repeats, --tokens and --layers must be at least 1")
    if a.backend == "nccl":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < 2:
            raise SystemExit(f"--backend nccl: the demo needs two CUDA GPUs on this host, found {n}; "
                             "use --backend gloo")
    if a.form is None:
        a.form = "resident" if a.backend == "nccl" else "archive"
    if a.rank is None:
        res = launch(a)
    else:
        a.init_method = a.init_method or "tcp://127.0.0.1:29511"
        res = run_rank(a)
        if a.rank != 1:
            return 0
        if a.out:
            with open(a.out, "w") as f:
                json.dump(res, f)
            return 0
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{res['backend']} {res['form']} {res['tokens']} tokens, {res['preset']}: "
              f"{res['wire_bytes_per_token']:.0f} B/token on the wire vs {res['fp16_bytes_per_token']} fp16 "
              f"({res['wire_ratio']:.2f}x); first decode step {res['ttfd_ours_s'] * 1e3:.1f} ms vs "
              f"{res['ttfd_fp16_s'] * 1e3:.1f} ms fp16 ({res['speedup']:.2f}x; with compression "
              f"{res['speedup_with_compress']:.2f}x); verified={res['verified']} "
              f"corrupt_refused={res['corrupt_refused']}")
    return 0
