"""Regenerate tests/data/reference_logits.npz from the numpy model.

Run only when the model code changes on purpose; the stored file lets
test_model.py check the forward pass without torch. It was cross-checked
against transformers (tests/test_reference_hf.py) when generated.
"""

from pathlib import Path

import numpy as np

PROMPT = "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon."
TOPK = 20
PROBE_SEED = 1234


def compute(model, tok):
    ids = np.asarray(tok.encode(PROMPT), dtype=np.int32)
    r = model.prefill(ids)
    top = np.argsort(-r.logits, axis=1)[:, :TOPK].astype(np.int32)
    probe = np.random.default_rng(PROBE_SEED).choice(model.cfg.vocab, 64, replace=False).astype(np.int32)
    return {
        "ids": ids,
        "top_ids": top,
        "top_logits": np.take_along_axis(r.logits, top, axis=1).astype(np.float32),
        "probe_ids": probe,
        "probe_logits": r.logits[:, probe].astype(np.float32),
        "keys_l0": r.cache.keys[0][:, :4].astype(np.float32),
        "keys_l29": r.cache.keys[-1][:, :4].astype(np.float32),
        "values_l29": r.cache.values[-1][:, :4].astype(np.float32),
    }


if __name__ == "__main__":
    from nexusquant.model import load

    model, tok = load()
    out = Path(__file__).parent / "data" / "reference_logits.npz"
    np.savez_compressed(out, **compute(model, tok))
    print(out, out.stat().st_size, "bytes")
