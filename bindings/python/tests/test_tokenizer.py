"""Tokenizer: fixed ids (checked against the HF fast tokenizer of SmolLM2 as
rebuilt from the GGUF by transformers) and, when the ``tokenizers`` package
is installed, whole-corpus agreement with an HF BPE built from the same
vocab/merges and SmolLM2's pre-tokenizer (digits isolated + byte-level)."""

import os

import pytest

CASES = {
    "Hello world!": [19556, 905, 17],
    "The year 2024 was great, isn't it?": [504, 713, 216, 34, 32, 34, 36, 436, 1109, 28, 3247, 982, 357, 47],
    "  leading spaces\n\nand\ttabs": [216, 2899, 5600, 198, 198, 397, 197, 100, 7366],
    "café naïve — 東京": [83, 1939, 2756, 15486, 46494, 1841, 17097, 247, 126, 16736, 122],
    "<|im_start|>user\nhi<|im_end|>\n": [1, 4093, 198, 6004, 2, 198],
    # every \p{N} character is its own pre-token, ASCII or not
    "x² + y³ = ½ of 10": [104, 19133, 1232, 329, 39050, 446, 216, 16738, 282, 216, 33, 32],
}


@pytest.mark.parametrize("text", list(CASES))
def test_known_ids(tok, text):
    assert tok.encode(text) == CASES[text]
    assert tok.decode(CASES[text]) == text


def test_special_tokens_can_be_plain_text(tok):
    ids = tok.encode("<|im_end|>", allow_special=False)
    assert 2 not in ids and tok.decode(ids) == "<|im_end|>"


def test_chat_template(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                    "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def _hf_equivalent(tok):
    tk = pytest.importorskip("tokenizers")
    merges = [tuple(k) for k in sorted(tok.ranks, key=tok.ranks.get)]
    hf = tk.Tokenizer(tk.models.BPE(vocab=tok.vocab, merges=merges))
    hf.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Digits(individual_digits=True),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.add_special_tokens([tk.AddedToken(t, special=True) for t in tok.special])
    return hf


@pytest.mark.parametrize("name", ["wikitext-2-raw-test.txt", "tinyshakespeare.txt"])
def test_matches_hf_bpe_on_corpus(tok, shared_data, name):
    path = os.path.join(shared_data, name)
    if not os.path.isfile(path) and name == "tinyshakespeare.txt":
        from nexusquant.eval.cli import DEFAULT_TEXT
        path = str(DEFAULT_TEXT)  # the package's excerpt: its first 300 KB
    if not os.path.isfile(path):
        pytest.skip("shared data not present")
    hf = _hf_equivalent(tok)
    text = open(path, encoding="utf-8").read()[:300_000]
    ours = tok.encode(text)
    assert ours == hf.encode(text).ids
    assert tok.decode(ours) == text
