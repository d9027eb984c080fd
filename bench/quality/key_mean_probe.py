"""How much of each layer's keys (and values) is a per-head constant.

For one window of a text, prefill the model, take RoPE off the keys with the model's
own RoPE, and per layer and KV head split every coded token (fp16 sinks and window
left out, as the library does) into the per-head mean over the block's tokens and a
residual. Prints one JSON object: per layer, averaged over heads,

* mean_rms:  RMS over channels of the per-head mean vector,
* mean_max:  largest |mean| of any channel,
* resid_rms: RMS of the per-token residual (x - mean),
* mean_energy: |mean|^2 / E|x|^2, the share of a token's energy that the mean carries,
* snr_loss_db: 10 log10(E|x|^2 / E|x - mean|^2): with a per-token scale taken from
  the token's RMS, the residual is coded this many dB less accurately than it would
  be once the mean is taken out.

    PYTHONPATH=bindings/python python3 bench/quality/key_mean_probe.py \
        --model qwen2.5-coder-0.5b --text python-stdlib --context 2048
"""
import argparse
import json
import sys

import numpy as np


def split_stats(x, a, b):
    """x: [heads, tokens, dim]; statistics over tokens a..b (coded tokens)."""
    sel = x[:, a:b].astype(np.float64)
    m = sel.mean(axis=1, keepdims=True)
    r = sel - m
    tot = float((sel ** 2).sum(-1).mean())
    res = float((r ** 2).sum(-1).mean())
    return {
        "mean_rms": float(np.sqrt((m ** 2).mean())),
        "mean_max": float(np.abs(m).max()),
        "resid_rms": float(np.sqrt((r ** 2).mean())),
        "mean_energy": 1.0 - res / tot,
        "snr_loss_db": 10.0 * np.log10(tot / res),
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default="python-stdlib")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--at", type=float, default=0.5, help="window start, fraction of the text")
    ap.add_argument("--fp16-sinks", type=int, default=4)
    ap.add_argument("--fp16-window", type=int, default=32)
    args = ap.parse_args(argv)

    from pathlib import Path
    from nexusquant.model import load
    from nexusquant.model.fetch import cache_dir, resolve_model
    from nexusquant.eval.texts import CODE_TEXT, materialise

    text = materialise(CODE_TEXT, cache_dir()) if args.text == CODE_TEXT else Path(args.text)
    model, tok = load(resolve_model(args.model))
    ids = np.asarray(tok.encode(Path(text).read_text(encoding="utf-8"), allow_special=False), dtype=np.int64)
    off = int(args.at * (len(ids) - args.context))
    pre = model.prefill(ids[off:off + args.context], logits="none")
    T = args.context
    a, b = args.fp16_sinks, T - args.fp16_window
    pos = np.arange(T)
    layers = []
    for li in range(pre.cache.n_layers):
        k = np.asarray(pre.cache.keys[li], dtype=np.float32)
        v = np.asarray(pre.cache.values[li], dtype=np.float32)
        k0 = model.apply_rope(k, pos, inverse=True)
        layers.append({"layer": li, "keys": split_stats(k0, a, b), "values": split_stats(v, a, b)})
    out = {"model": args.model, "text": Path(text).name, "context": T, "window_start_token": off,
           "layers": layers}
    json.dump(out, sys.stdout, indent=1)
    print()
    for L in layers:
        k, v = L["keys"], L["values"]
        print(f"layer {L['layer']:2d}  K mean_rms {k['mean_rms']:7.3f} max {k['mean_max']:7.2f} resid_rms "
              f"{k['resid_rms']:6.3f} energy {k['mean_energy']:.2f} ({k['snr_loss_db']:4.1f} dB) | "
              f"V energy {v['mean_energy']:.2f} ({v['snr_loss_db']:4.1f} dB)", file=sys.stderr)


if __name__ == "__main__":
    main()
