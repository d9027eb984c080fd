"""Float32 numpy Llama forward pass that exposes and accepts its KV cache.

Two entry points:

* ``prefill(tokens)``: run N tokens from position 0, return logits, the dense
  KV cache and optionally the last ``W`` post-RoPE queries of every layer
  (for observation-window importance scores).
* ``extend(cache, tokens)``: feed more tokens against a *given* cache, which
  may have been compressed or evicted per layer and per KV head. Each new
  token attends to the cached context plus the new tokens before it; the
  new tokens' K/V stay uncompressed and are appended to the returned cache.

Everything is float32 and layer-major (all tokens through one layer before the
next) so the projections are large matmuls; attention is chunked over queries
so a 2048-token prefill never materialises a full [heads, T, T] score tensor.
"""

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .gguf_llama import LlamaWeights
from .kvcache import KVCache


@dataclass
class PrefillResult:
    logits: Optional[np.ndarray]        # [T, vocab], [1, vocab] or None
    cache: KVCache
    queries: Optional[List[np.ndarray]]  # per layer [q_heads, W, d] post-RoPE


@dataclass
class ExtendResult:
    logits: Optional[np.ndarray]        # [M, vocab] (row i predicts token i+1)
    cache: KVCache                      # input cache + the M new tokens


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)) * w


def _softmax_inplace(s: np.ndarray) -> np.ndarray:
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


class _Layer:
    """One layer's weights as contiguous [in, out] matrices, q/k/v and
    gate/up fused: ``x @ W`` with a C-contiguous W is what BLAS runs fastest,
    and a transposed view costs ~30x on the single-row matmuls of decoding."""

    def __init__(self, lw):
        self.attn_norm, self.ffn_norm = lw.attn_norm, lw.ffn_norm
        self.wqkv = np.ascontiguousarray(np.concatenate([lw.wq, lw.wk, lw.wv]).T)
        # q/k/v biases (qwen2), fused like the weights; None for bias-free models
        biases = (lw.bq, lw.bk, lw.bv)
        self.bqkv = None
        if any(b is not None for b in biases):
            sizes = (lw.wq.shape[0], lw.wk.shape[0], lw.wv.shape[0])
            self.bqkv = np.concatenate([np.zeros(n, np.float32) if b is None else b
                                        for b, n in zip(biases, sizes)]).astype(np.float32)
        self.wo = np.ascontiguousarray(lw.wo.T)
        self.wgu = np.ascontiguousarray(np.concatenate([lw.w_gate, lw.w_up]).T)
        self.wd = np.ascontiguousarray(lw.w_down.T)


class NumpyLlama:
    def __init__(self, weights: LlamaWeights, chunk: int = 256):
        self.cfg = weights.config
        self.metadata = weights.metadata
        self.chunk = chunk
        self.tok_embd = weights.tok_embd
        self.out_norm = weights.out_norm
        self.lm_head = np.ascontiguousarray(weights.lm_head.T)   # [hidden, vocab]
        self.layers = [_Layer(lw) for lw in weights.layers]
        d = self.cfg.head_dim
        # float64 angles then float32 cos/sin: positions up to thousands times
        # base frequency 1 lose digits in float32.
        self.inv_freq = self.cfg.rope_theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        self.scale = np.float32(1.0 / np.sqrt(d))
        self.group = self.cfg.n_heads // self.cfg.n_kv_heads

    # -- RoPE ----------------------------------------------------------------
    def rope_cos_sin(self, positions: np.ndarray):
        ang = np.asarray(positions, dtype=np.float64)[..., None] * self.inv_freq
        return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

    def apply_rope(self, x: np.ndarray, positions: np.ndarray, inverse: bool = False) -> np.ndarray:
        """Rotate ``x[..., T, d]`` by ``positions`` (broadcastable to ``[..., T]``).
        ``inverse=True`` removes the rotation (keys back to pre-RoPE)."""
        cos, sin = self.rope_cos_sin(positions)
        if inverse:
            sin = -sin
        h = self.cfg.head_dim // 2
        out = np.empty_like(x)
        if self.cfg.rope_pairing == "split_half":
            x1, x2 = x[..., :h], x[..., h:]
            out[..., :h] = x1 * cos - x2 * sin
            out[..., h:] = x2 * cos + x1 * sin
        else:  # interleaved pairs (2i, 2i+1)
            x1, x2 = x[..., 0::2], x[..., 1::2]
            out[..., 0::2] = x1 * cos - x2 * sin
            out[..., 1::2] = x2 * cos + x1 * sin
        return out

    # -- shared pieces ---------------------------------------------------------
    def _qkv(self, lw, x, positions):
        c = self.cfg
        T, d = x.shape[0], c.head_dim
        qkv = rms_norm(x, lw.attn_norm, c.rms_eps) @ lw.wqkv
        if lw.bqkv is not None:
            qkv += lw.bqkv
        nq, nk = c.n_heads * d, c.n_kv_heads * d
        q = qkv[:, :nq].reshape(T, c.n_heads, d).transpose(1, 0, 2)
        k = qkv[:, nq:nq + nk].reshape(T, c.n_kv_heads, d).transpose(1, 0, 2)
        v = qkv[:, nq + nk:].reshape(T, c.n_kv_heads, d).transpose(1, 0, 2)
        return self.apply_rope(q, positions), self.apply_rope(k, positions), np.ascontiguousarray(v)

    def _mlp(self, lw, x):
        gu = rms_norm(x, lw.ffn_norm, self.cfg.rms_eps) @ lw.wgu
        F = gu.shape[1] // 2
        g, u = gu[:, :F], gu[:, F:]
        # silu(g) * u in place: these [T, ffn] temporaries are the largest
        # activations in the model
        t = np.negative(g)
        with np.errstate(over="ignore"):  # exp overflow -> inf -> silu = -0
            np.exp(t, out=t)
        t += 1.0
        g /= t
        g *= u
        return g @ lw.wd

    def _logits(self, x):
        return rms_norm(x, self.out_norm, self.cfg.rms_eps) @ self.lm_head

    def _embed(self, tokens):
        return self.tok_embd[np.asarray(tokens, dtype=np.int64)].astype(np.float32)

    # -- prefill ---------------------------------------------------------------
    def _causal_attention(self, q, k, v):
        """q [Hq,T,d], k/v [Hkv,T,d] at positions 0..T-1 -> [T, Hq*d]."""
        Hq, T, d = q.shape
        Hkv, g = k.shape[0], self.group
        out = np.empty((T, Hq, d), dtype=np.float32)
        # Plain 2-D matmuls per KV head: numpy's stacked matmul is several
        # times slower than BLAS on these shapes. The g query heads sharing a
        # KV head are stacked into one [g*c, d] operand.
        for h in range(Hkv):
            kh = k[h]
            qh = q[h * g:(h + 1) * g] * self.scale
            for s in range(0, T, self.chunk):
                e = min(T, s + self.chunk)
                c = e - s
                sc = (qh[:, s:e].reshape(g * c, d) @ kh[:e].T).reshape(g, c, e)
                # the causal mask only touches the diagonal block
                sc[:, :, s:e][:, np.triu(np.ones((c, c), dtype=bool), 1)] = -np.inf
                p = _softmax_inplace(sc).reshape(g * c, e)
                out[s:e, h * g:(h + 1) * g] = (p @ v[h, :e]).reshape(g, c, d).transpose(1, 0, 2)
        return out.reshape(T, Hq * d)

    def prefill(self, tokens, logits: str = "all", obs_window: int = 0) -> PrefillResult:
        """``logits``: "all" (every position), "last", or "none"."""
        tokens = np.asarray(tokens, dtype=np.int64)
        T = len(tokens)
        pos = np.arange(T, dtype=np.int64)
        x = self._embed(tokens)
        keys, values, queries = [], [], ([] if obs_window else None)
        for lw in self.layers:
            q, k, v = self._qkv(lw, x, pos)
            keys.append(k)
            values.append(v)
            if obs_window:
                queries.append(np.ascontiguousarray(q[:, -obs_window:]))
            x = x + self._causal_attention(q, k, v) @ lw.wo
            x = x + self._mlp(lw, x)
        if logits == "all":
            out = self._logits(x)
        elif logits == "last":
            out = self._logits(x[-1:])
        else:
            out = None
        return PrefillResult(out, KVCache.dense(keys, values), queries)

    # -- extend against a given cache -------------------------------------------
    def extend(self, cache: KVCache, tokens, logits: bool = True) -> ExtendResult:
        c = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        M = len(tokens)
        if cache.n_layers != c.n_layers or cache.n_kv_heads != c.n_kv_heads:
            raise ValueError("cache shape does not match the model")
        pos = np.arange(cache.next_pos, cache.next_pos + M, dtype=np.int64)
        x = self._embed(tokens)
        new_mask = np.triu(np.ones((M, M), dtype=bool), 1)
        nk, nv, npos = [], [], []
        for l, lw in enumerate(self.layers):
            q, k, v = self._qkv(lw, x, pos)
            att = np.empty((M, c.n_heads, c.head_dim), dtype=np.float32)
            lk, lv, lp = [], [], []
            # one KV head at a time: heads may keep different token sets
            for h in range(c.n_kv_heads):
                ck, cv, cp = cache.head(l, h)
                kk = np.concatenate([np.asarray(ck, np.float32), k[h]])
                vv = np.concatenate([np.asarray(cv, np.float32), v[h]])
                n = len(ck)
                g = self.group
                qh = q[h * g:(h + 1) * g].reshape(g * M, c.head_dim) * self.scale
                sc = (qh @ kk.T).reshape(g, M, n + M)
                sc[:, :, n:][:, new_mask] = -np.inf
                p = _softmax_inplace(sc).reshape(g * M, n + M)
                att[:, h * g:(h + 1) * g] = (p @ vv).reshape(g, M, c.head_dim).transpose(1, 0, 2)
                lk.append(kk)
                lv.append(vv)
                lp.append(np.concatenate([np.asarray(cp, np.int64), pos]))
            nk.append(_maybe_stack(lk))
            nv.append(_maybe_stack(lv))
            npos.append(_maybe_stack(lp))
            x = x + att.reshape(M, -1) @ lw.wo
            x = x + self._mlp(lw, x)
        out = self._logits(x) if logits else None
        return ExtendResult(out, KVCache(nk, nv, npos, cache.next_pos + M))

    # -- convenience -------------------------------------------------------------
    def generate_greedy(self, cache: KVCache, first_token: int, max_new: int,
                        stop_ids=(), until=None) -> List[int]:
        """Greedy decoding against ``cache``; ``first_token`` is the token whose
        prediction starts generation (typically the last prompt token, which
        the caller left out of the prefill). ``until(tokens)`` returning true
        stops early (decoding is memory-bound: each step reads every weight)."""
        out, tok = [], int(first_token)
        for _ in range(max_new):
            r = self.extend(cache, [tok])
            cache = r.cache
            tok = int(np.argmax(r.logits[-1]))
            if tok in stop_ids:
                break
            out.append(tok)
            if until is not None and until(out):
                break
        return out


def _maybe_stack(arrs):
    """Keep the dense [H, n, ...] layout when every head has the same length."""
    if all(a.shape == arrs[0].shape for a in arrs):
        return np.stack(arrs)
    return arrs
