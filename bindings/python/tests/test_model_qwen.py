"""Qwen2.5-Coder-0.5B (qwen2: q/k/v biases, split-half RoPE, GQA 14:2, byte-level BPE
with Qwen2's pre-tokenizer): the numpy forward and the tokenizer against a reference
computed with transformers from the same GGUF (tests/make_reference_qwen.py)."""

from pathlib import Path

import numpy as np
import pytest

REF = Path(__file__).parent / "data" / "reference_logits_qwen.npz"


@pytest.fixture(scope="module")
def qwen():
    from nexusquant.model import load
    from nexusquant.model.fetch import fetch_model

    try:
        path = fetch_model(name="qwen2.5-coder-0.5b")
    except Exception as e:  # offline machine
        pytest.skip(f"model unavailable: {e}")
    return load(path)


def test_config(qwen):
    c = qwen[0].cfg
    assert c.arch == "qwen2"
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == (24, 14, 2, 64)
    assert (c.hidden, c.vocab) == (896, 151936)
    assert c.rope_theta == 1e6 and c.rope_pairing == "split_half"


def test_tokenizer_matches_reference_and_round_trips(qwen):
    from make_reference_qwen import PROMPT
    tok = qwen[1]
    ref = np.load(REF)
    assert tok.encode(PROMPT, allow_special=False) == ref["ids"].tolist()
    text = "x = [1, 22, 333]\n\n\tif a >= b:  # It's done\r\n    return 'ok'\n"
    assert tok.decode(tok.encode(text, allow_special=False)) == text


def test_forward_matches_transformers(qwen):
    model = qwen[0]
    ref = np.load(REF)
    r = model.prefill(ref["ids"])
    got_top = np.take_along_axis(r.logits, ref["top_ids"].astype(np.int64), axis=1)
    # same dequantised weights in float32; a wrong bias or RoPE moves logits by > 1
    np.testing.assert_allclose(got_top, ref["top_logits"], atol=2e-2)
    np.testing.assert_allclose(r.logits[:, ref["probe_ids"]], ref["probe_logits"], atol=2e-2)
    assert (r.logits.argmax(1) == ref["top_ids"][:, 0]).mean() > 0.95
    np.testing.assert_allclose(r.cache.keys[0][:, :4], ref["keys_l0"], atol=1e-2)
    np.testing.assert_allclose(r.cache.keys[-1][:, :4], ref["keys_last"], atol=2e-2)
    np.testing.assert_allclose(r.cache.values[-1][:, :4], ref["values_last"], atol=2e-2)
