"""Quality of compressed KV caches on a real model, by teacher forcing.

For each sample a window of N + M + 1 tokens is taken from the text. The first
N are prefilled once; every scheme then compresses that cache and the next M
tokens are fed against the compressed cache (each new token also sees the
uncompressed new tokens before it). Their M logits predict tokens N+1..N+M
and are compared with the logits from the unmodified float32 cache (the
reference, "fp16" in the report: the model's native cache).

Because the first prediction is made by a fed token rather than by the last
prefill position, all M scored predictions read the compressed cache.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import metrics, needle
from .schemes import SchemeContext, get_scheme


@dataclass
class EvalConfig:
    texts: Sequence[Path]
    schemes: Sequence[str]
    context: int = 1024
    score: int = 128
    samples: int = 2
    obs_window: int = 32          # last queries handed to eviction schemes
    needle: bool = True
    needle_context: int = 0       # haystack tokens; 0 = the context size
    needle_depths: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9)
    needle_at: float = 0.5        # where in the text the haystack starts (fraction of its length)
    model_path: Optional[Path] = None
    use_profiles: bool = True     # False: no model profile (presets as the C library has them)
    phase: float = 0.5            # where in its slot each sample window starts (0..1)


def sample_offsets(n_tokens: int, window: int, samples: int, phase: float = 0.5) -> List[int]:
    """Deterministic starts spread evenly through the token stream: sample i starts at
    (i + phase) / samples of the span. Runs with phase 0.5 and with another phase
    (tuning runs) read different windows when the slots are wider than a window."""
    span = n_tokens - window
    if span < 0:
        raise ValueError(f"text has {n_tokens} tokens, a window needs {window}")
    return [int((i + phase) * span / samples) for i in range(samples)]


class Evaluator:
    def __init__(self, model, tok, log: Callable[[str], None] = lambda s: None, model_path=None,
                 use_profiles: bool = True):
        self.model, self.tok, self.log = model, tok, log
        self.use_profiles = use_profiles
        # what model profiles match against: the GGUF's general.name and its file name
        meta = getattr(model, "metadata", None) or {}
        self.model_name = " ".join(str(x) for x in (meta.get("name"), model_path and Path(model_path).name) if x)

    def _ctx(self, queries) -> SchemeContext:
        return SchemeContext(config=self.model.cfg, rope=self.model.apply_rope, queries=queries,
                             model_name=self.model_name, use_profiles=self.use_profiles)

    def _apply(self, scheme, cache, queries):
        t = time.perf_counter()
        res = scheme.apply(cache, self._ctx(queries))
        return res, time.perf_counter() - t

    def text_rows(self, path: Path, cfg: EvalConfig) -> Dict[str, dict]:
        ids = np.asarray(self.tok.encode(Path(path).read_text(encoding="utf-8"),
                                         allow_special=False), dtype=np.int64)
        N, M = cfg.context, cfg.score
        acc = {name: {"nll_sum": 0.0, "kl_sum": 0.0, "top1_sum": 0, "n": 0, "bytes": 0,
                      "fp16_bytes": 0, "elements": 0, "apply_s": 0.0, "k_bits": [], "v_bits": [],
                      "layer_bits": None, "win": []} for name in cfg.schemes}
        errors: Dict[str, str] = {}
        ref_nll, n_ref = 0.0, 0
        for si, off in enumerate(sample_offsets(len(ids), N + M + 1, cfg.samples, cfg.phase)):
            win = ids[off:off + N + M + 1]
            t = time.perf_counter()
            pre = self.model.prefill(win[:N], logits="none", obs_window=cfg.obs_window)
            fed, targets = win[N:N + M], win[N + 1:N + M + 1]
            ref = self.model.extend(pre.cache, fed).logits
            self.log(f"  {Path(path).name} sample {si + 1}/{cfg.samples} @token {off}: "
                     f"prefill {N} + score {M} in {time.perf_counter() - t:.1f}s")
            rs = metrics.token_stats(ref, ref, targets)
            ref_nll, n_ref = ref_nll + rs["nll_sum"], n_ref + rs["n"]
            for name in cfg.schemes:
                if name in errors:
                    continue
                try:
                    res, dt = self._apply(get_scheme(name), pre.cache, pre.queries)
                except Exception as e:  # report and carry on with other schemes
                    errors[name] = f"{type(e).__name__}: {e}"
                    self.log(f"  {name}: {errors[name]}")
                    continue
                st = metrics.token_stats(ref, self.model.extend(res.cache, fed).logits, targets)
                a = acc[name]
                for k in ("nll_sum", "kl_sum", "top1_sum", "n"):
                    a[k] += st[k]
                a["bytes"] += res.nbytes
                a["fp16_bytes"] += pre.cache.fp16_bytes()
                a["elements"] += pre.cache.n_elements()
                a["apply_s"] += dt
                a["win"].append(100.0 * (float(np.exp((st["nll_sum"] - rs["nll_sum"]) / st["n"])) - 1.0))
                if res.layer_bits:
                    a["k_bits"] += [k for k, _ in res.layer_bits]
                    a["v_bits"] += [v for _, v in res.layer_bits]
                    if a["layer_bits"] is None:
                        a["layer_bits"] = " ".join(f"K{k}V{v}" for k, v in res.layer_bits)
        ppl_ref = float(np.exp(ref_nll / n_ref))
        rows = {}
        for name in cfg.schemes:
            row = {"scheme": name, "text": Path(path).name, "context": N, "score": M,
                   "samples": cfg.samples, "ppl_ref": ppl_ref}
            if name in errors:
                row["error"] = errors[name]
            else:
                a = acc[name]
                ppl = float(np.exp(a["nll_sum"] / a["n"]))
                row.update({
                    "bits_per_element": 8.0 * a["bytes"] / a["elements"],
                    "ratio": a["fp16_bytes"] / a["bytes"],
                    "bytes": a["bytes"] // cfg.samples,
                    "fp16_bytes": a["fp16_bytes"] // cfg.samples,
                    "ppl": ppl,
                    "ppl_delta_pct": 100.0 * (ppl / ppl_ref - 1.0),
                    "kl": a["kl_sum"] / a["n"],
                    "top1": a["top1_sum"] / a["n"],
                    "apply_s": a["apply_s"] / cfg.samples,
                    "ppl_delta_pct_windows": [round(x, 3) for x in a["win"]],
                })
                if a["k_bits"]:  # the bits the library chose, over layers and samples
                    row["k_bits_mean"] = float(np.mean(a["k_bits"]))
                    row["v_bits_mean"] = float(np.mean(a["v_bits"]))
                    row["layer_bits_first_sample"] = a["layer_bits"]
            rows[name] = row
        return rows

    def needle_scores(self, filler_text: str, cfg: EvalConfig):
        """Per scheme: (score, depths counted); depths the uncompressed cache misses do not count."""
        cases = needle.build_cases(self.tok, filler_text, cfg.needle_context or cfg.context, cfg.needle_depths)
        ref_hits, hits = [], {n: [] for n in cfg.schemes}
        for case in cases:
            cache, queries = needle.prepare(self.model, case, cfg.obs_window)
            ref_hits.append(needle.retrieve(self.model, cache, case, self.tok))
            for name in cfg.schemes:
                try:
                    res, _ = self._apply(get_scheme(name), cache, queries)
                    hits[name].append(needle.retrieve(self.model, res.cache, case, self.tok))
                except Exception:
                    hits[name].append(False)   # the text rows carry the error
        self.log(f"  needle: reference retrieves {sum(ref_hits)}/{len(ref_hits)} depths")
        return {n: (needle.score(h, ref_hits), sum(ref_hits)) for n, h in hits.items()}


def evaluate(model, tok, cfg: EvalConfig, log: Callable[[str], None] = lambda s: None) -> List[dict]:
    ev = Evaluator(model, tok, log, cfg.model_path, cfg.use_profiles)
    rows = []
    for path in cfg.texts:
        needles = {}
        if cfg.needle:
            # each text is its own haystack, by default from its middle: away from file headers
            text = Path(path).read_text(encoding="utf-8")
            start = int(cfg.needle_at * len(text))
            needles = ev.needle_scores(text[start:start + 8 * (cfg.needle_context or cfg.context)], cfg)
        for name, row in ev.text_rows(path, cfg).items():
            row["needle"], row["needle_depths"] = needles.get(name, (None, 0))
            rows.append(row)
    return rows
