"""Cross-check against transformers loading the same GGUF (skipped without
torch/transformers). transformers de-quantises the GGUF itself and undoes
llama.cpp's q/k permutation, so agreement of logits *and* of the KV cache
confirms both our de-quantisation and our split-half RoPE layout."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    m = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    return m.eval()


def _layer_kv(pkv, layer):
    if hasattr(pkv, "layers"):            # transformers >= 4.56 Cache objects
        return pkv.layers[layer].keys[0].numpy(), pkv.layers[layer].values[0].numpy()
    return pkv[layer][0][0].numpy(), pkv[layer][1][0].numpy()


def test_logits_and_cache_match_transformers(hf_model, model, tok, shared_data):
    import os
    path = os.path.join(shared_data, "wikitext-2-raw-test.txt")
    text = open(path, encoding="utf-8").read()[10000:14000] if os.path.isfile(path) else \
        "The quick brown fox jumps over the lazy dog. " * 30
    ids = tok.encode(text)[:300]
    with torch.no_grad():
        out = hf_model(torch.tensor([ids]), use_cache=True)
    ours = model.prefill(ids)
    diff = np.abs(out.logits[0].numpy() - ours.logits).max()
    print(f"max |logit diff| vs transformers over {len(ids)} tokens: {diff:.3g}")
    assert diff < 1e-2
    for layer in (0, 15, 29):
        k, v = _layer_kv(out.cache, layer)
        np.testing.assert_allclose(ours.cache.keys[layer], k, atol=2e-3)
        np.testing.assert_allclose(ours.cache.values[layer], v, atol=2e-3)


def test_tokenizer_matches_transformers(gguf_path, tok):
    # transformers rebuilds the tokenizer from the GGUF with a plain ByteLevel
    # pre-tokenizer, without SmolLM2's Digits(individual_digits) step. For
    # ASCII digits that changes nothing (the merges never join digits), but
    # non-ASCII numerals such as "²" differ: there we follow the model's own
    # tokenizer.json / llama.cpp ("\p{N}" isolated), see test_tokenizer.py.
    htok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    for s in ["Numbers 12345 and 3.14159, isn't it?", "  two  spaces\n\nnew\tline",
              "<|im_start|>user\nhi<|im_end|>\n", "café — 東京"]:
        assert tok.encode(s) == htok(s)["input_ids"], s
