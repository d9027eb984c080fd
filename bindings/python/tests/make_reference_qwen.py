"""Regenerate tests/data/reference_logits_qwen.npz with transformers (independent of
the numpy model): transformers reads the same GGUF (dequantising it to float32) and
its own tokenizer from the GGUF metadata. Needs torch + transformers; run only when
the reference must change. test_model_qwen.py checks the numpy forward against it.
"""

from pathlib import Path

import numpy as np

PROMPT = ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
          "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
          "# In 1969, Apollo 11 landed on the Moon.\n")
TOPK = 20
PROBE_SEED = 1234


def compute(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 torch_dtype=torch.float32)
    model.eval()
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
    logits = out.logits[0].numpy()
    kv = out.past_key_values
    if hasattr(kv, "layers"):  # transformers >= 5: DynamicCache of layers
        k0, k_last, v_last = kv.layers[0].keys, kv.layers[-1].keys, kv.layers[-1].values
    else:
        k0, k_last, v_last = kv[0][0], kv[-1][0], kv[-1][1]
    top = np.argsort(-logits, axis=1)[:, :TOPK].astype(np.int32)
    probe = np.random.default_rng(PROBE_SEED).choice(logits.shape[1], 64, replace=False).astype(np.int32)
    return {
        "ids": np.asarray(ids, dtype=np.int32),
        "top_ids": top,
        "top_logits": np.take_along_axis(logits, top, axis=1).astype(np.float32),
        "probe_ids": probe,
        "probe_logits": logits[:, probe].astype(np.float32),
        "keys_l0": k0[0, :, :4].numpy().astype(np.float32),
        "keys_last": k_last[0, :, :4].numpy().astype(np.float32),
        "values_last": v_last[0, :, :4].numpy().astype(np.float32),
    }


if __name__ == "__main__":
    from nexusquant.model.fetch import fetch_model

    out = Path(__file__).parent / "data" / "reference_logits_qwen.npz"
    np.savez_compressed(out, **compute(fetch_model(name="qwen2.5-coder-0.5b")))
    print(out, out.stat().st_size, "bytes")
