"""Time the numpy forward pass: prefill of N tokens, then M-token extend.

    python benchmarks/bench_prefill.py --tokens 2048            # real model
    python benchmarks/bench_prefill.py --tokens 2048 --random   # same shapes, random weights

--random needs no download; timing does not depend on the weight values.
"""

import argparse
import time

import numpy as np

from nexusquant.model.gguf_llama import LayerWeights, LlamaConfig, LlamaWeights
from nexusquant.model.numpy_llama import NumpyLlama

SMOLLM2_135M = LlamaConfig(n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, hidden=576, ffn=1536,
                           vocab=49152, rope_theta=100000.0, rms_eps=1e-5, context_length=8192)


def random_weights(c: LlamaConfig, seed=0) -> LlamaWeights:
    rng = np.random.default_rng(seed)

    def m(o, i):
        return (rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i)).astype(np.float32)

    layers = [LayerWeights(np.ones(c.hidden, np.float32), m(c.n_heads * c.head_dim, c.hidden),
                           m(c.n_kv_heads * c.head_dim, c.hidden), m(c.n_kv_heads * c.head_dim, c.hidden),
                           m(c.hidden, c.n_heads * c.head_dim), np.ones(c.hidden, np.float32),
                           m(c.ffn, c.hidden), m(c.ffn, c.hidden), m(c.hidden, c.ffn))
              for _ in range(c.n_layers)]
    emb = m(c.vocab, c.hidden)
    return LlamaWeights(c, emb, layers, np.ones(c.hidden, np.float32), emb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--extend", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--random", action="store_true")
    a = ap.parse_args()
    if a.random:
        model = NumpyLlama(random_weights(SMOLLM2_135M))
    else:
        from nexusquant.model import load
        model, _ = load()
    ids = np.random.default_rng(1).integers(0, model.cfg.vocab, a.tokens + a.extend)
    for _ in range(a.repeat):
        t, c = time.perf_counter(), time.process_time()
        pre = model.prefill(ids[:a.tokens], logits="last")
        t1, c1 = time.perf_counter(), time.process_time()
        model.extend(pre.cache, ids[a.tokens:])
        t2, c2 = time.perf_counter(), time.process_time()
        print(f"prefill {a.tokens}: {t1 - t:.2f}s wall ({c1 - c:.2f}s cpu); "
              f"extend {a.extend}: {t2 - t1:.2f}s wall ({c2 - c1:.2f}s cpu)", flush=True)


if __name__ == "__main__":
    main()
