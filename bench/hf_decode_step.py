"""One transformers decode step on the CPU after a long prompt: NexusQuantCache under
nexusquant_evict (attention over the compressed blocks, `attention="attend"`, and the
path that decodes them, `attention="decode"`) against transformers' DynamicCache, on a
random-weight Llama small enough for a CPU with Llama-3-8B's attention heads (defaults:
4 layers, 16 query heads and 8 KV heads of 128, hidden 1024, MLP 2816, vocabulary 8192,
float32, sdpa). Random weights: the tokens mean nothing; the
time of a step is what is measured.

Each cache gets the same prompt (one prefill each, not timed), then the caches take
decode steps in turn, one step each per repetition, the order rotating every repetition
so that none always runs first; every step appends one token to its cache (all caches
grow alike). A step's time is the wall time of `model(token, cache=...)`, logits
included, and the process CPU time it took (all threads; on a loaded machine the wall
time also counts waiting for a core, the CPU time does not). Prints one JSON object: the
per-step times of every cache, their medians, and the median over repetitions of the
per-repetition ratio DynamicCache / NexusQuantCache (> 1: the compressed cache's step
is faster), for wall and CPU time.

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j --target nexusquant
    NEXUSQUANT_LIBRARY=$PWD/build/libnexusquant.so PYTHONPATH=bindings/python \\
        python3 bench/hf_decode_step.py --prompt 4096 --quality lossless --repeats 30
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from nexusquant.core import version
from nexusquant.hf import nexusquant_evict, rope_spec_from_config


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompt", type=int, default=4096)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--quality", default="lossless")
    p.add_argument("--rope", default="remove", choices=["remove", "keep"],
                   help="stored keys with RoPE removed (the cache's default) or kept")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-decode-path", action="store_true", help="leave out attention='decode'")
    p.add_argument("--threads", type=int, default=0, help="torch (and library) threads; 0 = torch's default")
    p.add_argument("--json", help="also write the result here")
    return p.parse_args()


def main():
    a = parse()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=a.layers, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
                      vocab_size=a.vocab, max_position_embeddings=max(8192, 2 * a.prompt),
                      attn_implementation=a.attn)
    dtype = getattr(torch, a.dtype)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    ids = torch.randint(3, a.vocab, (1, a.prompt), generator=torch.Generator().manual_seed(1))
    rope = None  # the cache's default: read off the config, RoPE removed
    if a.rope == "keep":
        rope = rope_spec_from_config(model.config, mode="keep", model=model)

    runs = {"dynamic": None, "nq_attend": nexusquant_evict(model, quality=a.quality, rope=rope)}
    if not a.no_decode_path:
        runs["nq_decode"] = nexusquant_evict(model, quality=a.quality, rope=rope, attention="decode")
    caches, prefill_s = {}, {}
    with torch.no_grad():
        for name, mgr in runs.items():
            t = time.perf_counter()
            if mgr is None:
                caches[name] = model(ids, cache=DynamicCache(config=model.config), use_cache=True).cache
            else:
                with mgr:
                    caches[name] = model(ids, use_cache=True).cache
            prefill_s[name] = time.perf_counter() - t

        token = torch.tensor([[5]])

        def step(name):
            """(wall s, process CPU s) of one decode step."""
            mgr = runs[name]
            if mgr is None:
                t, c = time.perf_counter(), time.process_time()
                model(token, cache=caches[name], use_cache=True)
                return time.perf_counter() - t, time.process_time() - c
            with mgr:
                t, c = time.perf_counter(), time.process_time()
                model(token, cache=caches[name], use_cache=True)
                return time.perf_counter() - t, time.process_time() - c

        names = list(runs)
        for _ in range(a.warmup):
            for n in names:
                step(n)
        times = {n: [] for n in names}
        for r in range(a.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                times[n].append(step(n))

    def summary(which):
        ms = {n: [round(t[which] * 1e3, 3) for t in ts] for n, ts in times.items()}
        med = {n: round(statistics.median(v), 3) for n, v in ms.items()}
        ratio = {f"dynamic_over_{n}": round(statistics.median(d / x for d, x in zip(ms["dynamic"], ms[n])), 3)
                 for n in names if n != "dynamic"}
        return ms, med, ratio

    ms, med, ratio = summary(0)
    cpu_ms, cpu_med, cpu_ratio = summary(1)
    nq = caches["nq_attend"]
    rep = nq.memory_report()
    out = {
        "tokens": a.prompt, "layers": a.layers, "hidden": a.hidden, "q_heads": a.heads, "kv_heads": a.kv_heads,
        "head_dim": a.head_dim, "dtype": a.dtype, "attn": a.attn, "quality": a.quality, "rope": a.rope,
        "threads": torch.get_num_threads(), "repeats": a.repeats,
        "torch": torch.__version__, "transformers": transformers.__version__, "nexusquant": version(),
        "prefill_s": {n: round(v, 2) for n, v in prefill_s.items()},
        "step_ms_median": med, "ratio_median": ratio, "step_cpu_ms_median": cpu_med, "cpu_ratio_median": cpu_ratio,
        "attend_calls": nq.attend_calls, "decode_calls": nq.decode_calls,
        "nq_decode_calls": caches["nq_decode"].decode_calls if "nq_decode" in caches else None,
        "tokens_attended": rep["tokens_attended"], "cache_ratio_vs_dynamic": round(rep["ratio_vs_dynamic"], 2),
        "step_ms": ms, "step_cpu_ms": cpu_ms,
    }
    text = json.dumps(out)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
