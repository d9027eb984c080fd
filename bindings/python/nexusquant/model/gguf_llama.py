"""Read a Llama-architecture GGUF into float32 numpy weights + hyperparameters.

RoPE pairing. HF Llama checkpoints rotate dimension pairs (i, i + d/2) of each
head ("split-half", rotate_half). llama.cpp's converter permutes the rows of
the q/k projections per head so that the same model runs with its interleaved
"normal" RoPE, which rotates pairs (2i, 2i + 1):

    gguf_rows = hf_rows.reshape(H, 2, d/2, C).swapaxes(1, 2).reshape(H*d, C)

We undo that permutation when loading (``unpermute_qk``), so the weights are
back in HF's layout, the forward pass uses split-half RoPE (the library's
default) and the KV cache we expose equals the HF model's KV cache. Both
choices give the same logits -- q.k is invariant under applying one
permutation to both q and k -- which tests/test_model.py checks numerically.
The permutation only reorders output rows, so un-permuting dequantised Q4_1
rows is exact.

Qwen2 (architecture ``qwen2``) is the same network with biases on the q/k/v
projections; llama.cpp runs it with split-half ("neox") RoPE, so its converter
does not permute q/k rows and there is nothing to undo.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


@dataclass
class LlamaConfig:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    ffn: int
    vocab: int
    rope_theta: float
    rms_eps: float
    context_length: int
    # "split_half" (HF rotate_half, pairs i and i+d/2) or "interleaved"
    # (pairs 2i and 2i+1, llama.cpp's normal mode on unconverted GGUF rows).
    rope_pairing: str = "split_half"
    arch: str = "llama"


# Architectures the loader reads: llama, and qwen2 (llama with q/k/v biases).
ARCHITECTURES = ("llama", "qwen2")


@dataclass
class LayerWeights:
    # All matrices are [out, in] (HF nn.Linear layout): y = x @ w.T
    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    bq: Optional[np.ndarray] = None   # q/k/v projection biases (qwen2); None: no bias
    bk: Optional[np.ndarray] = None
    bv: Optional[np.ndarray] = None


@dataclass
class LlamaWeights:
    config: LlamaConfig
    tok_embd: np.ndarray          # [vocab, hidden]
    layers: List[LayerWeights]
    out_norm: np.ndarray
    lm_head: np.ndarray           # [vocab, hidden]; tied to tok_embd if absent
    metadata: Dict[str, object] = field(default_factory=dict)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation (interleaved -> split-half)."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (split-half -> interleaved); used by tests."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _tensor_f32(t) -> np.ndarray:
    from gguf.quants import dequantize

    arr = dequantize(t.data, t.tensor_type)
    # GGUF lists shapes innermost-first; numpy data is already [rows, cols].
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_config(reader) -> LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"expected a GGUF of architecture {' or '.join(ARCHITECTURES)}, got {arch!r}")
    p = arch + "."
    hidden = int(_field(reader, p + "embedding_length"))
    n_heads = int(_field(reader, p + "attention.head_count"))
    head_dim = int(_field(reader, p + "rope.dimension_count", hidden // n_heads))
    vocab = _field(reader, p + "vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return LlamaConfig(
        n_layers=int(_field(reader, p + "block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, p + "attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        hidden=hidden,
        ffn=int(_field(reader, p + "feed_forward_length")),
        vocab=int(vocab),
        rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        context_length=int(_field(reader, p + "context_length", 2048)),
        arch=arch,
    )


def open_gguf(path):
    from gguf import GGUFReader

    return GGUFReader(str(Path(path)))


def load_gguf(path_or_reader, rope_pairing: str = "split_half") -> LlamaWeights:
    """Load weights as float32 from a path or an open ``GGUFReader``.
    ``rope_pairing="interleaved"`` keeps the GGUF's permuted q/k rows (only
    useful to verify that the two layouts agree)."""
    if rope_pairing not in ("split_half", "interleaved"):
        raise ValueError(rope_pairing)
    reader = path_or_reader
    if not hasattr(reader, "tensors"):
        reader = open_gguf(path_or_reader)
    cfg = read_config(reader)
    if cfg.arch == "qwen2" and rope_pairing != "split_half":
        raise ValueError("qwen2 GGUF rows are already in split-half order")
    cfg.rope_pairing = rope_pairing
    tensors = {t.name: t for t in reader.tensors}

    def get(name):
        return _tensor_f32(tensors[name])

    def opt(name):
        return get(name) if name in tensors else None

    layers = []
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        wq, wk = get(b + "attn_q.weight"), get(b + "attn_k.weight")
        # llama rows are permuted for interleaved RoPE; qwen2 rows are not (neox RoPE)
        if rope_pairing == "split_half" and cfg.arch == "llama":
            wq = unpermute_qk(wq, cfg.n_heads)
            wk = unpermute_qk(wk, cfg.n_kv_heads)
        layers.append(LayerWeights(
            attn_norm=get(b + "attn_norm.weight"),
            wq=np.ascontiguousarray(wq), wk=np.ascontiguousarray(wk),
            wv=get(b + "attn_v.weight"), wo=get(b + "attn_output.weight"),
            ffn_norm=get(b + "ffn_norm.weight"),
            w_gate=get(b + "ffn_gate.weight"), w_up=get(b + "ffn_up.weight"),
            w_down=get(b + "ffn_down.weight"),
            bq=opt(b + "attn_q.bias"), bk=opt(b + "attn_k.bias"), bv=opt(b + "attn_v.bias"),
        ))
    tok = get("token_embd.weight")
    head = get("output.weight") if "output.weight" in tensors else tok
    meta = {
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "name": _field(reader, "general.name"),
    }
    return LlamaWeights(cfg, tok, layers, get("output_norm.weight"), head, meta)
