"""transformers `generate` on a GPU: NexusQuantCache (nexusquant_evict) against
transformers' DynamicCache, on a random-weight Llama big enough for the KV cache to
matter (defaults: 8 layers, 8 KV heads of 128, bf16, batch 4 x 8192-token prompts:
1 GiB of bf16 K/V). Random weights make the tokens meaningless; the timing and the
memory are what is measured.

Reports, for each cache: prefill time (generate with one new token), decode tokens/s
((new - 1) x batch tokens over the time generate takes beyond the prefill), peak torch
memory during generate, and the bytes the cache holds at the end (DynamicCache: its
tensors; NexusQuantCache: memory_report(), whose blocks live in cudaMalloc memory that
torch does not see, so the device's free memory is read as well).

    cmake -S . -B build-cuda -DNQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build-cuda -j
    NEXUSQUANT_LIBRARY=$PWD/build-cuda/libnexusquant.so PYTHONPATH=bindings/python \\
        python3 bench/gpu/hf_generate.py --quality balanced --json $OUT/hf_generate.json

Without a CUDA backend in the library the cache stages K/V through host memory
(report["transfer"] == "host-staging"); the script says so and still runs.
"""
import argparse
import json
import sys
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from nexusquant.hf import library_has_cuda, nexusquant_evict


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prompt", type=int, default=8192)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--quality", default="balanced")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the median is kept)")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def timed(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], out


def tensor_bytes(cache):
    return sum(t.numel() * t.element_size() for l in cache.layers for t in (l.keys, l.values) if t is not None)


def measure(model, ids, new, repeats, manager=None):
    """(prefill s, decode tokens/s, peak torch bytes, cache bytes, device bytes held, report)."""
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, return_dict_in_generate=True)

    def run(n):
        if manager is None:
            return model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        with manager:
            return model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)

    run(2)  # warm-up: kernels, RoPE tables, allocator pools
    t1, _ = timed(lambda: run(1), repeats)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free_before = torch.cuda.mem_get_info()[0]
    tn, out = timed(lambda: run(new), repeats)
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    held = free_before - torch.cuda.mem_get_info()[0]  # what the returned output (cache + sequences) keeps
    cache = out.cache
    report = cache.memory_report() if hasattr(cache, "memory_report") else None
    cache_bytes = report["total_bytes"] if report else tensor_bytes(cache)
    tokens = ids.shape[0] * (new - 1)
    return {"prefill_s": t1, "generate_s": tn, "decode_tokens_per_s": tokens / max(tn - t1, 1e-9),
            "peak_torch_bytes": peak, "cache_bytes": cache_bytes, "device_bytes_held": held,
            "report": report, "sequences": out.sequences}


def main():
    a = parse()
    if not torch.cuda.is_available():
        sys.exit("hf_generate.py needs a CUDA device")
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                         num_key_value_heads=a.kv_heads, head_dim=a.head_dim, intermediate_size=a.hidden * 11 // 4,
                         vocab_size=a.vocab, max_position_embeddings=a.prompt + a.new + 16, rope_theta=500000.0,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).to(device="cuda", dtype=dtype).eval()
    model.config._attn_implementation = a.attn
    model.generation_config.pad_token_id = 0
    ids = torch.randint(3, a.vocab, (a.batch, a.prompt), device="cuda")
    kv_bytes = 2 * a.layers * a.batch * a.kv_heads * a.head_dim * (a.prompt + a.new - 1) * dtype.itemsize

    base = measure(model, ids, a.new, a.repeats)
    nq = nexusquant_evict(model, quality=a.quality)
    ours = measure(model, ids, a.new, a.repeats, manager=nq)
    same = (base["sequences"][:, a.prompt:] == ours["sequences"][:, a.prompt:]).float().mean().item()
    result = {
        "torch": torch.__version__, "device": torch.cuda.get_device_name(), "library_has_cuda": library_has_cuda(),
        "args": vars(a), "kv_bytes_model_dtype": kv_bytes, "same_tokens_fraction": same,
        "dynamic": {k: v for k, v in base.items() if k not in ("sequences", "report")},
        "nexusquant": {k: v for k, v in ours.items() if k != "sequences"},
    }
    r = ours["report"]
    print(f"{result['device']}: {a.layers} layers x {a.kv_heads} KV heads x {a.head_dim}, batch {a.batch} x "
          f"{a.prompt} tokens + {a.new} new, {a.dtype}, attention {a.attn}; library CUDA backend: "
          f"{result['library_has_cuda']}, transfer {r['transfer']}")
    for name, m in (("DynamicCache", base), (f"NexusQuantCache ({a.quality})", ours)):
        print(f"  {name:28s} prefill {m['prefill_s'] * 1e3:8.1f} ms  decode {m['decode_tokens_per_s']:9.1f} tok/s  "
              f"cache {m['cache_bytes'] / 2**20:8.1f} MiB  held on device {m['device_bytes_held'] / 2**20:8.1f} MiB  "
              f"peak torch {m['peak_torch_bytes'] / 2**20:8.1f} MiB")
    print(f"  memory saved: {(base['cache_bytes'] - ours['cache_bytes']) / 2**20:.1f} MiB of cache "
          f"(ratio vs DynamicCache {r['ratio_vs_dynamic']:.2f}x), decode speed "
          f"{ours['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x DynamicCache's, "
          f"same greedy tokens {same:.1%}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
