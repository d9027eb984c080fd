"""Hugging Face transformers integration: a compressed KV cache for ``generate``.

    from nexusquant.hf import nexusquant_evict

    with nexusquant_evict(model, quality="balanced") as nq:
        out = model.generate(input_ids, max_new_tokens=200)
    print(nq.last_report)        # the cache's memory_report() when generate returned

What happens
------------
`NexusQuantCache` is a transformers `Cache`. Each attention layer keeps, per batch
element, library `Sequence`s (real compressed blocks) plus a small full-precision
window of recent tokens:

* The prefill pass of a layer attends over its exact keys and values (compression after
  the prefill cannot change the prefill's own outputs). Right after, the layer's K/V
  (post-RoPE, ``[batch, kv_heads, T, head_dim]``) are compressed per batch element into
  one block (eviction, RoPE removal, Hadamard, E8 quantisation) and the tensors are
  dropped: the memory the cache holds really shrinks.
* Eviction ranks the prefill's tokens by the attention its last 32 queries pay them
  (the library's observation-window score). The queries are taken from the model's
  attention function, which `nexusquant_evict` routes through a tap; a cache used
  outside the manager falls back to the key-norm proxy (and warns: on SmolLM2 it
  costs several times more perplexity).
* Tokens processed after the prefill (generated tokens, or the prompt of a second turn
  on a reused cache) stay at full precision in the window. When the window holds
  ``window + chunk`` tokens, the oldest ones (a multiple of ``chunk``) are appended to
  the sequence as a new block: quantised only, never evicted, nothing stored is
  compressed again.
* Positions are the original ones. After eviction the attention sees fewer keys than
  tokens were seen; `get_seq_length` still counts every token seen (so new tokens get
  RoPE positions that continue from the original length) while `get_mask_sizes`
  describes the keys the attention really gets. The library re-applies RoPE to the
  kept keys at their original positions when it decodes them.
* Attention is the unfused path: on every forward after the prefill, `update` decodes
  each layer's compressed tokens into a fresh tensor of the model's dtype and
  concatenates the full-precision window and the new tokens. That tensor is transient
  (freed after the layer's attention) but it costs a full decode per layer per step.

Devices: CPU tensors are passed to the library by pointer. CUDA tensors are passed by
device pointer only when the loaded library has a CUDA backend (and, for now, the
cache evicts nothing: see `NexusQuantCache.transfer`); otherwise each compress copies
the K/V to host memory and each decode writes to host memory and copies the result to
the device. `NexusQuantCache.transfer` says which (``"host"``, ``"device"`` or
``"host-staging"``) and `memory_report()` repeats it.

Batches: every batch element is compressed into its own sequence, so each element
gets what it would get alone. Left padding: inside `nexusquant_evict`, the forward
wrapper reads the padding off the prefill's 2D attention mask; each element stores
only its real tokens, at the positions generate gives them (0 at its first real
token), and evicts from those. Elements then hold different numbers of compressed
tokens: `update` right-aligns them (zeros before the shorter ones) and the wrapper
replaces the model's 2D attention mask by `NexusQuantCache.attention_mask_for`, which
hides those slots. Right padding is refused. A cache used outside the manager cannot
see the mask: there the padding tokens are stored as tokens, which is exact only
without eviction (the model's own mask still lines up with them).

Measuring
---------
`NexusQuantCache.memory_report()` counts the cache and nothing else. Two common
measurements do not measure the compression:

* ``torch.cuda.memory_allocated()`` after ``model(ids, use_cache=True)`` minus before
  counts everything that forward left alive besides the cache, above all the returned
  logits (``[batch, T, vocab]`` in the model's dtype: 1k tokens of a 32k vocabulary are
  62.5 MiB in bf16, half of Mistral-7B's whole fp16 KV cache at that length), and it
  misses what the library allocates outside torch (host blocks; device blocks come
  from cudaMalloc, not from torch's allocator). The "ratio" it gives mostly compares
  two logits tensors.
* ``model(ids, labels=ids).loss`` scores the prefill pass, which attends over exact
  keys and values; the compressed cache is only read by tokens processed after the
  prefill, so this loss is identical with and without compression. Measure the loss of
  a continuation fed after the compressed prefix instead.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import math
import sys
import threading
import warnings
import weakref
from typing import Optional

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer

try:  # transformers >= 5.2x
    from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, get_layer_types_and_kwargs
except ImportError:  # pragma: no cover - older 5.x
    DYNAMIC_LAYER_TYPE_MAPPING, get_layer_types_and_kwargs = None, None

from . import _lib as L
from .core import Block, Context, NexusQuantError, RopeSpec
from .profiles import merge as merge_profile

__all__ = ["NexusQuantCache", "NexusQuantLayer", "nexusquant_evict", "rope_spec_from_config", "library_has_cuda"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Model types whose rotary embedding pairs (2i, 2i+1) rather than (i, i + d/2), for when
# only a config is given (with a model, its modeling file's rotate_half is read).
_INTERLEAVED_ROPE = {"gptj", "cohere", "cohere2", "glm", "glm4", "ernie4_5", "ernie4_5_moe"}
_NQ_ERR_BACKEND_UNAVAILABLE = 8
# Whether evicting caches may hold device blocks (see NexusQuantCache.transfer).
_DEVICE_EVICTION_OK = False


# ---------------------------------------------------------------------------- config


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if get is not None else config


def _model_name(config) -> str:
    """What model profiles match against: the checkpoint's name or path."""
    return " ".join(str(x) for x in (getattr(config, "_name_or_path", None),
                                    getattr(config, "name_or_path", None)) if x)


def model_shape(config) -> dict:
    """num_layers, num_q_heads, num_kv_heads and head_dim of a (text) config."""
    c = _text_config(config)
    q_heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or q_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // q_heads
    return {"num_layers": c.num_hidden_layers, "num_q_heads": q_heads, "num_kv_heads": kv_heads,
            "head_dim": head_dim}


def _rope_parameters(c) -> dict:
    """The RoPE settings of a config as one flat dict (transformers 5 `rope_parameters`,
    or the 4.x `rope_theta` + `rope_scaling` attributes)."""
    params = getattr(c, "rope_parameters", None)
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        # one entry per layer type: the full-attention layers are the ones compressed
        params = params.get("full_attention") or next(iter(params.values()))
    out = dict(params) if isinstance(params, dict) else {}
    if "rope_theta" not in out and getattr(c, "rope_theta", None) is not None:
        out["rope_theta"] = c.rope_theta
    scaling = getattr(c, "rope_scaling", None)
    if isinstance(scaling, dict) and "rope_type" not in out and "type" not in out:
        for key, val in scaling.items():
            out.setdefault(key, val)
    if "partial_rotary_factor" not in out and getattr(c, "partial_rotary_factor", None) is not None:
        out["partial_rotary_factor"] = c.partial_rotary_factor
    return out


def _rope_pairing(model, c) -> str:
    """"interleaved" when the model's rotate_half pairs (2i, 2i+1) (x[..., ::2]), else "split"."""
    module = sys.modules.get(type(model).__module__) if model is not None else None
    fn = getattr(module, "rotate_half", None)
    if fn is not None:
        try:
            src = inspect.getsource(fn)
        except (OSError, TypeError):
            src = ""
        if src:
            return "interleaved" if "::2]" in src.replace(" ", "") else "split"
    return "interleaved" if getattr(c, "model_type", "") in _INTERLEAVED_ROPE else "split"


def rope_spec_from_config(config, mode: str = "remove", model=None) -> RopeSpec:
    """The model's RoPE (theta, scaling, partial rotary, pairing) as a library `RopeSpec`.

    The pairing is read off the model's `rotate_half` when `model` is given (Llama,
    Mistral, Qwen, GPT-NeoX: split halves; GPT-J, Cohere, GLM: interleaved), else
    guessed from `model_type`. A wrong pairing or theta does not make the cache wrong
    (RoPE is removed and re-applied with the same settings), only its codes worse.

    Supported `rope_type`s: default, linear, dynamic (NTK), llama3, yarn. Any other type
    (longrope, mrope, yarn with ``truncate=False``, ...) cannot be removed exactly, so
    the keys are quantised with their rotation left in (``mode="keep"``) and a warning
    says so; decode then returns them exactly as rotated.
    """
    c = _text_config(config)
    p = _rope_parameters(c)
    shape = model_shape(c)
    rtype = p.get("rope_type", p.get("type", "default")) or "default"
    theta = float(p.get("rope_theta", 10000.0))
    partial = float(p.get("partial_rotary_factor", 1.0) or 1.0)
    rotary = int(shape["head_dim"] * partial)
    if "partial_rotary_factor" not in p and getattr(c, "rotary_dim", None):  # GPT-J style configs
        rotary = int(c.rotary_dim)
    pairing = _rope_pairing(model, c)
    spec = RopeSpec(mode=mode, pairing=pairing, theta=theta,
                    rotary_dims=0 if rotary == shape["head_dim"] else rotary)
    if mode != "remove":
        return spec
    factor = p.get("factor")
    orig = p.get("original_max_position_embeddings")
    if rtype == "default":
        return spec
    if rtype == "linear":
        spec.scaling, spec.factor = "linear", float(factor)
        return spec
    if rtype == "dynamic":
        # transformers grows the base against max_position_embeddings (rope_utils' dynamic NTK)
        spec.scaling, spec.factor = "dynamic", float(factor)
        spec.original_max_position = int(c.max_position_embeddings)
        return spec
    if rtype == "llama3":
        spec.scaling, spec.factor = "llama3", float(factor)
        spec.original_max_position = int(orig)
        spec.low_freq_factor = float(p.get("low_freq_factor", 1.0))
        spec.high_freq_factor = float(p.get("high_freq_factor", 4.0))
        return spec
    if rtype == "yarn" and p.get("truncate", True):
        orig = int(orig or c.max_position_embeddings)
        if factor is None:
            factor = c.max_position_embeddings / orig
        factor = float(factor)
        att = p.get("attention_factor")
        if att is None:
            def mscale(scale, m=1.0):
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            ms, ms_all = p.get("mscale"), p.get("mscale_all_dim")
            att = mscale(factor, ms) / mscale(factor, ms_all) if ms and ms_all else mscale(factor)
        spec.scaling, spec.factor, spec.original_max_position = "yarn", factor, orig
        spec.beta_fast = float(p.get("beta_fast") or 32.0)
        spec.beta_slow = float(p.get("beta_slow") or 1.0)
        spec.attention_factor = float(att)
        return spec
    warnings.warn(f"nexusquant: rope_type {rtype!r} cannot be removed exactly; keys are quantised with their "
                  "rotation kept (rope mode 'keep')", stacklevel=3)
    spec.mode = "keep"
    return spec


def _layer_plan(c) -> tuple:
    """(layer types, per-layer constructor kwargs) of a text config, one per layer."""
    n = c.num_hidden_layers
    if get_layer_types_and_kwargs is not None:
        try:
            types, kwargs = get_layer_types_and_kwargs(c)
            if isinstance(kwargs, dict):  # transformers <= 5.17: one dict for every layer
                kwargs = [kwargs] * len(types)
            if len(types) == n and len(kwargs) == n:
                return list(types), list(kwargs)
        except (AttributeError, KeyError, TypeError, ValueError):
            pass
    types = list(getattr(c, "layer_types", None) or ["full_attention"] * n)
    kwargs = []
    for t in types:
        if t == "sliding_attention":
            kwargs.append({"sliding_window": c.sliding_window})
        elif t == "chunked_attention":
            kwargs.append({"sliding_window": c.attention_chunk_size})
        else:
            kwargs.append({})
    return types, kwargs


def _plain_layer(kind: str, kwargs: dict):
    """The ordinary (uncompressed) transformers layer for a non-full-attention type."""
    mapping = DYNAMIC_LAYER_TYPE_MAPPING or {"sliding_attention": DynamicSlidingWindowLayer,
                                             "chunked_attention": DynamicSlidingWindowLayer}
    if kind not in mapping:
        raise NotImplementedError(f"nexusquant: layer type {kind!r} is not supported")
    return mapping[kind](**kwargs)


# ---------------------------------------------------------------------------- devices

_CUDA_BACKEND: Optional[bool] = None


def library_has_cuda() -> bool:
    """Whether the loaded libnexusquant was built with a CUDA backend that found a device."""
    global _CUDA_BACKEND
    if _CUDA_BACKEND is None:
        try:
            Context(8, 1, backend="cuda").free()
            _CUDA_BACKEND = True
        except NexusQuantError as e:
            if e.status not in (_NQ_ERR_BACKEND_UNAVAILABLE, 2):
                raise
            _CUDA_BACKEND = False
    return _CUDA_BACKEND


def _safe_view(x: torch.Tensor) -> torch.Tensor:
    """x itself when the library can read it through its strides, else a contiguous copy."""
    if any(s == 0 for s, n in zip(x.stride(), x.shape) if n > 1):
        return x.contiguous()
    return x


# ---------------------------------------------------------------------------- layer


class NexusQuantLayer(CacheLayerMixin):
    """One attention layer: compressed library sequences + a full-precision window.

    `keys`/`values` hold the full-precision window only, ``[batch, kv_heads, W, head_dim]``.
    The compressed tokens of batch element b live in `segments[b]`: a list of
    `core.Sequence` whose blocks, in order, hold that element's compressed tokens. It
    is one sequence unless beam search (or `num_return_sequences`) duplicated an element
    after the prefill: the copies then share the sequences they had (the bytes exist
    once) and each appends to a new sequence of its own.
    """

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, cache: "NexusQuantCache", layer_idx: int):
        super().__init__()
        self._cache = weakref.proxy(cache)
        self.layer_idx = layer_idx
        self.segments: Optional[list] = None
        self.seen = 0            # tokens seen, evicted ones included (original count)
        self.window_start = 0    # original position of the window's first token
        self.stored = 0          # compressed tokens per head: the most any element holds
        self.counts: list = []   # compressed tokens per head of each element
        self.pads: list = []     # left-padding tokens of each element's prefill (not stored)
        self.compress_calls = 0  # library compress calls (prefill + appended chunks)
        self._pending = None     # the prefill's K/V while its queries are awaited

    # -- transformers API

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if key_states.dtype not in _DTYPES:
            raise TypeError(f"nexusquant: KV dtype {key_states.dtype} is not float16/bfloat16/float32")
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.keys = key_states.new_empty((b, h, 0, d))
        self.values = value_states.new_empty((b, h, 0, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Stores new K/V and returns what the attention should use.

        First call (the prefill): returns the exact K/V, then compresses them into one
        block per batch element and keeps nothing else. Later calls: returns the decoded
        compressed tokens + the full-precision window + the new tokens (unfused path).
        """
        if not self.is_initialized or (self.segments is None and self.keys.shape[0] != key_states.shape[0]):
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        if self.segments is None:
            if q == 0:
                return key_states, value_states
            self.segments = [[] for _ in range(key_states.shape[0])]
            self.pads = self._cache._take_prefill_pads(key_states.shape[0], q)
            self.counts = [0] * key_states.shape[0]
            self.seen = self.window_start = q
            self._cache._note_prefill(self.layer_idx)
            if self._cache._awaits_queries(self.layer_idx):
                # compressed as soon as the attention function has seen this layer's
                # queries (within this forward; see NexusQuantCache's `scores`)
                self._pending = (key_states, value_states)
            else:
                self._compress(key_states, value_states, start=0)
            return key_states, value_states
        out_k, out_v = self._assemble(key_states, value_states)
        if q:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            self.seen += q
            self._flush()
        return out_k, out_v

    def get_seq_length(self) -> int:
        """Every token seen (evicted ones too): new tokens continue from this position."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple:
        """(kv_length, kv_offset): the attention gets `stored + window + query_length`
        keys; the offset is the number of evicted tokens, so that the causal mask lines
        the last key up with the last query (query positions start at `seen`)."""
        held = self.stored + self.keys.shape[-2] if self.is_initialized else 0
        return held + query_length, self.seen - held

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.segments = None
        self._pending = None
        self.keys = self.values = None
        self.is_initialized = False
        self.seen = self.window_start = self.stored = 0
        self.counts, self.pads = [], []

    def crop(self, tokens_to_remove: int) -> None:
        """Drops the last -tokens_to_remove tokens; only the full-precision window can be cropped."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        n = -tokens_to_remove
        if n == 0 or not self.is_initialized:
            return
        if n > self.keys.shape[-2]:
            raise NotImplementedError("nexusquant: cannot crop tokens that are already compressed")
        self.keys = self.keys[..., : self.keys.shape[-2] - n, :].clone()
        self.values = self.values[..., : self.values.shape[-2] - n, :].clone()
        self.seen -= n

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select([int(i) for i in beam_idx.tolist()])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._select([b for b in range(self.keys.shape[0]) for _ in range(repeats)])

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            idx = torch.arange(self.keys.shape[0])[indices.cpu() if torch.is_tensor(indices) else indices]
            self._select([int(i) for i in idx.tolist()])

    # -- nexusquant

    @property
    def window_length(self) -> int:
        return self.keys.shape[-2] if self.is_initialized else 0

    def sequences(self) -> list:
        """Every library sequence of this layer, each once."""
        seen, out = set(), []
        for segs in self.segments or ():
            for s in segs:
                if id(s) not in seen:
                    seen.add(id(s))
                    out.append(s)
        return out

    def compressed_bytes(self) -> int:
        """Every byte of the library blocks of this layer (shared blocks counted once)."""
        return sum(s.nbytes for s in self.sequences())

    def window_bytes(self) -> int:
        """Full-precision bytes held: the window (and, only inside a prefill forward,
        the K/V waiting for their queries)."""
        if not self.is_initialized:
            return 0
        held = [self.keys, self.values] + list(self._pending or ())
        return sum(t.numel() * t.element_size() for t in held)

    def num_blocks(self, batch: int = 0) -> int:
        return sum(s.num_blocks for s in self.segments[batch]) if self.segments else 0

    def blocks(self, batch: int = 0) -> list:
        """The library blocks of batch element b, in order (borrowed `core.Block`s)."""
        lib = L.lib()
        return [Block(lib.nq_sequence_block(s._h, i), s._ctx, owned=False)
                for s in (self.segments[batch] if self.segments else ()) for i in range(s.num_blocks)]

    def positions(self, batch: int = 0, head: int = 0) -> np.ndarray:
        """Original positions of the keys the attention sees for (batch, kv head), in order."""
        parts = []
        for blk in self.blocks(batch):
            if blk.info()["memory"] != 0:  # a device block: read its positions from a host copy
                blk = _host_copy(blk)
            parts.append(blk.positions(head))
        start = self.window_start - (self.pads[batch] if self.pads else 0)
        parts.append(np.arange(start, start + self.window_length, dtype=np.int64))
        return np.concatenate(parts)

    def _stream(self, t: torch.Tensor):
        """The stream the library runs on for device tensors (torch's current one)."""
        if t.is_cuda and self._cache.transfer == "device":
            return torch.cuda.current_stream(t.device).cuda_stream
        return None

    def _compress(self, k: torch.Tensor, v: torch.Tensor, start: int, queries: Optional[torch.Tensor] = None):
        """Appends k, v ([batch, heads, n, dim], tokens start..start+n-1 of the batch's
        token axis) as one block per batch element. The prefill (start 0) of an element
        with left padding skips its padding tokens; every element's positions are its
        own (token index minus its padding, as generate's position ids count them).
        queries: [batch, q_heads, W, dim] post-RoPE queries of the prefill's last W
        tokens (eviction scores); None = the key-norm proxy."""
        cache = self._cache
        transfer = cache.transfer
        ctx = cache._context_for(k.device)
        stream = self._stream(k)
        shared = _shared_ids(self.segments)
        for b, segs in enumerate(self.segments):
            pad = self.pads[b]
            kb, vb = k[b], v[b]
            if start == 0 and pad:
                kb, vb = kb[:, pad:], vb[:, pad:]
            if kb.shape[1] == 0:
                continue
            if not segs or id(segs[-1]) in shared:
                segs.append(ctx.sequence(self.layer_idx))
            scores = None
            if queries is not None:
                # NQ_SCORES_QUERIES' formula, computed by torch where the tensors are (its
                # matmuls are much faster than the library's scalar loop on the CPU, and
                # the GPU backend takes no query descriptors); handed over as given scores
                qb = queries[b][:, -min(queries.shape[-2], kb.shape[1]):]
                scores = _query_scores(qb, kb, cache.shape["num_kv_heads"]).cpu().numpy()
            if transfer == "host-staging":
                kb, vb = kb.to("cpu"), vb.to("cpu")
            segs[-1].append(_safe_view(kb), _safe_view(vb), start_position=max(start - pad, 0), scores=scores,
                            stream=stream)
            self.counts[b] = sum(s.num_tokens for s in segs)
            self.compress_calls += 1
        self.stored = max(self.counts)

    def _resolve_pending(self, queries: Optional[torch.Tensor] = None):
        if self._pending is not None:
            k, v = self._pending
            self._pending = None
            if queries is not None:
                queries = queries[..., -min(self._cache.query_window, queries.shape[-2]):, :]
            self._compress(k, v, start=0, queries=queries)

    def _flush(self):
        """Compresses the oldest window tokens once the window holds window + chunk tokens."""
        cache = self._cache
        w = self.keys.shape[-2]
        if w < cache.window + cache.chunk:
            return
        n = (w - cache.window) // cache.chunk * cache.chunk
        self._compress(self.keys[..., :n, :], self.values[..., :n, :], start=self.window_start)
        # clone so that the old window's storage is really released
        self.keys = self.keys[..., n:, :].clone()
        self.values = self.values[..., n:, :].clone()
        self.window_start += n

    def _assemble(self, new_k: torch.Tensor, new_v: torch.Tensor):
        """[decoded compressed | window | new] along the token axis."""
        b, h, q, d = new_k.shape
        dv_ = new_v.shape[-1]
        r, w = self.stored, self.keys.shape[-2]
        # an element holding fewer compressed tokens (left padding) is right-aligned; the
        # slots before its tokens are zeros that the attention mask hides (attention_mask_for)
        out_k = new_k.new_empty((b, h, r + w + q, d))
        out_v = new_v.new_empty((b, h, r + w + q, dv_))
        if r:
            staging = self._cache.transfer == "host-staging"
            if staging:
                pin = torch.cuda.is_available()
                dk = torch.empty((b, h, r, d), dtype=new_k.dtype, pin_memory=pin)
                dv = torch.empty((b, h, r, dv_), dtype=new_v.dtype, pin_memory=pin)
            else:
                dk, dv = out_k[:, :, :r], out_v[:, :, :r]
            stream = self._stream(new_k)
            for i, segs in enumerate(self.segments):
                off = r - self.counts[i]
                if off:
                    dk[i, :, :off] = 0
                    dv[i, :, :off] = 0
                for seq in segs:
                    n = seq.num_tokens
                    seq.decode(0, n, out=(dk[i, :, off:off + n], dv[i, :, off:off + n]), stream=stream)
                    off += n
            if staging:
                out_k[:, :, :r].copy_(dk, non_blocking=True)
                out_v[:, :, :r].copy_(dv, non_blocking=True)
        out_k[:, :, r:r + w] = self.keys
        out_v[:, :, r:r + w] = self.values
        out_k[:, :, r + w:] = new_k
        out_v[:, :, r + w:] = new_v
        return out_k, out_v

    def _select(self, indices: list):
        """Keeps batch elements `indices`, in that order. Repeated elements share their
        sequences (no bytes are copied); each copy appends to a new sequence of its own."""
        if not self.is_initialized:
            return
        if self.segments is not None:
            self.segments = [list(self.segments[i]) for i in indices]
            self.counts = [self.counts[i] for i in indices]
            self.pads = [self.pads[i] for i in indices]
        idx = torch.tensor(indices, device=self.keys.device)
        self.keys = self.keys.index_select(0, idx)
        self.values = self.values.index_select(0, idx)


def _shared_ids(segments) -> set:
    """ids of the sequences that appear in more than one batch element."""
    count = {}
    for segs in segments:
        for s in segs:
            count[id(s)] = count.get(id(s), 0) + 1
    return {i for i, n in count.items() if n > 1}


def _query_scores(q: torch.Tensor, k: torch.Tensor, kv_heads: int, pool: int = 15) -> torch.Tensor:
    """What the library's NQ_SCORES_QUERIES computes, in torch: softmax(q k^T / sqrt(d)) of
    the last W queries over the keys they see (causal), summed over the queries,
    max-pooled over `pool` tokens (the library default, 15), summed over the query heads of each KV head.
    q [q_heads, W, d], k [kv_heads, T, d] (both post-RoPE) -> float32 [kv_heads, T]."""
    hq, w, d = q.shape
    t = k.shape[1]
    g = hq // kv_heads
    future = torch.arange(t, device=q.device)[None, :] > torch.arange(t - w, t, device=q.device)[:, None]
    out = torch.empty((kv_heads, t), dtype=torch.float32, device=q.device)
    for h in range(kv_heads):  # one KV head at a time bounds the [g, W, T] logits
        logits = torch.matmul(q[h * g:(h + 1) * g].float(), k[h].float().t()) / math.sqrt(d)
        logits.masked_fill_(future, float("-inf"))
        p = torch.softmax(logits, dim=-1).sum(1)  # [g, T]
        p = torch.nn.functional.max_pool1d(p[:, None, :], pool, stride=1, padding=pool // 2)[:, 0]
        out[h] = p.sum(0)
    return out


def _host_copy(blk: Block) -> Block:
    """A host copy of a device block (waits for the copy)."""
    lib = L.lib()
    fn = lib.nq_block_copy
    fn.restype = L.c_int
    fn.argtypes = [L.vp, L.vp, L.c_int, L.i32, L.vp, L.size_t, L.vp, L.ctypes.POINTER(L.vp)]
    out = L.vp()
    _check_status(fn(blk._ctx.handle, blk.handle, 0, 0, None, 0, None, L.ctypes.byref(out)))
    torch.cuda.synchronize()
    return Block(out.value, blk._ctx)


def _check_status(status: int):
    if status != 0:
        raise NexusQuantError(status, L.lib().nq_last_error().decode())


# ---------------------------------------------------------------------------- cache


class NexusQuantCache(Cache):
    """A transformers `Cache` whose attention layers are compressed by libnexusquant.

    Args:
        model_or_config: the model (or its config): layer count, heads, head_dim and RoPE
            are read from it.
        quality: a library preset: lossless (quantisation only; every preset is lossy),
            high = conservative, balanced, max = aggressive, S/M/L/XL, or custom.
        k_bits, v_bits, evict: override the preset's bits and evicted fraction of the
            prefill.
        window: full-precision tokens kept after the prefill (the most recent ones).
        chunk: when the window holds window + chunk tokens, the oldest multiple of chunk
            tokens is appended to the compressed sequence (quantised only).
        rope: a `RopeSpec` overriding what `rope_spec_from_config` reads.
        scores: how eviction ranks the prefill's tokens. "queries": by the attention of
            the prefill's last `query_window` queries (what the library's
            NQ_SCORES_QUERIES computes); the queries are taken from the model's
            attention function, which only `nexusquant_evict` routes through the cache.
            Without it (a cache passed to `generate` by hand) the key-norm proxy is
            used. "key-norm": always the proxy. Irrelevant when nothing is evicted.
        query_window: how many of the prefill's last queries score the tokens.
        num_threads: CPU threads of the library (default: torch's intra-op threads).
        transfer: for CUDA tensors: "auto" (device pointers when the library has a CUDA
            backend, else host staging) or "host-staging" (always copy through host
            memory and use the CPU backend). See `transfer`.
        profile: "auto" (default): the model profile for `quality` when one matches the
            model's shape and name (`nexusquant.profiles`: per-layer bits tuned on that
            model); a profile name to force one; None for the generic preset. Not
            applied when k_bits, v_bits, overrides, codec or target_ratio are given.
        **context_kwargs: any other `core.Context` setting (sink_tokens, recent_window,
            fp16_sinks, fp16_window, codec, evict_mode, overrides, ...).

    Layers that are not full attention (sliding window, linear attention) keep the
    ordinary transformers layer for their type, uncompressed.

    The attention path is unfused: every forward after the prefill decodes each layer's
    compressed tokens into a transient tensor (see the module docstring).
    """

    def __init__(self, model_or_config, quality: str = "lossless", *, k_bits: Optional[int] = None,
                 v_bits: Optional[int] = None, evict: Optional[float] = None, window: int = 32, chunk: int = 32,
                 rope: Optional[RopeSpec] = None, scores: str = "queries", query_window: int = 32,
                 num_threads: Optional[int] = None, transfer: str = "auto", profile: Optional[str] = "auto",
                 **context_kwargs):
        config = getattr(model_or_config, "config", model_or_config)
        text = _text_config(config)
        shape = model_shape(text)
        if window < 0 or chunk < 1:
            raise ValueError("window must be >= 0 and chunk >= 1")
        self.window, self.chunk = int(window), int(chunk)
        if scores not in ("queries", "key-norm"):
            raise ValueError("scores must be 'queries' or 'key-norm'")
        if query_window < 1:
            raise ValueError("query_window must be >= 1")
        self.scores, self.query_window = scores, int(query_window)
        self.quality = quality
        model = model_or_config if hasattr(model_or_config, "config") else None
        self.rope = rope if rope is not None else rope_spec_from_config(text, model=model)
        if num_threads is None:
            num_threads = max(1, torch.get_num_threads())
        if transfer not in ("auto", "host-staging"):
            raise ValueError("transfer must be 'auto' or 'host-staging'")
        # the profile's settings for this preset, then everything passed explicitly
        settings = merge_profile(quality, shape, _model_name(config), profile,
                                 dict(context_kwargs, k_bits=k_bits, v_bits=v_bits, evict=evict))
        self.profile_settings = {k: v for k, v in settings.items() if k not in context_kwargs
                                 and k not in ("k_bits", "v_bits", "evict")}
        self._ctx_args = dict(preset=quality, rope=self.rope, num_threads=num_threads,
                              num_layers=shape["num_layers"], **settings)
        self.context = Context(shape["head_dim"], shape["num_kv_heads"], shape["num_q_heads"], **self._ctx_args)
        self._device_contexts = {}
        self.shape = shape
        self._warned_key_norm = False
        self._prefill_pads = None
        fractions = {self.context.layer_params(i)["evict_fraction"] for i in range(shape["num_layers"])}
        if len(fractions) > 1:
            # transformers builds one attention mask per forward, sized by one layer: every
            # layer must keep the same number of tokens
            raise NotImplementedError("nexusquant: per-layer eviction fractions differ; the transformers "
                                      "integration needs the same fraction in every layer (bits may differ)")
        self._evicting = [f > 0 for f in fractions] * shape["num_layers"]
        layer_types, layer_kwargs = _layer_plan(text)
        layers = [NexusQuantLayer(self, i) if kind == "full_attention" else _plain_layer(kind, kw)
                  for i, (kind, kw) in enumerate(zip(layer_types, layer_kwargs))]
        super().__init__(layers=layers)
        self._transfer = None if transfer == "auto" else transfer

    # -- properties

    @property
    def transfer(self) -> str:
        """How K/V reach the library: "host" (CPU tensors by pointer), "device" (CUDA
        tensors by device pointer: the library has a CUDA backend, the blocks live in GPU
        memory, compress and decode run on torch's current stream) or "host-staging"
        (CUDA tensors copied to host memory, compressed and decoded by the CPU backend,
        the decoded tensors copied back to the GPU; the blocks live in host memory).

        "device" is used only when no layer evicts: with eviction the CUDA backend of
        libnexusquant 0.1.0 crashes when a sequence appends an evicted device block (it
        reads the block's kept positions from device memory), so evicting caches stage
        through the host until that is fixed."""
        dev = next((l.device for l in self.layers if getattr(l, "is_initialized", False)
                    and getattr(l, "device", None) is not None), None)
        if dev is None or dev.type == "cpu":
            return "host"
        if self._transfer is None:
            # Evicted blocks stay on the host for now: nq_sequence_append reads the kept
            # positions of the new block from its bytes, which for a device block are in
            # device memory (a crash in libnexusquant 0.1.0's CUDA backend).
            device_ok = library_has_cuda() and (_DEVICE_EVICTION_OK or not self.evicts)
            self._transfer = "device" if device_ok else "host-staging"
        return self._transfer

    def _context_for(self, device: torch.device) -> Context:
        """The host context, or (device transfer) one of the CUDA backend for that GPU."""
        if device.type == "cpu" or self.transfer != "device":
            return self.context
        idx = device.index if device.index is not None else torch.cuda.current_device()
        ctx = self._device_contexts.get(idx)
        if ctx is None:
            ctx = Context(self.shape["head_dim"], self.shape["num_kv_heads"], self.shape["num_q_heads"],
                          backend="cuda", device=idx, **self._ctx_args)
            self._device_contexts[idx] = ctx
        return ctx

    @property
    def evicts(self) -> bool:
        """Whether any layer evicts tokens of the prefill."""
        return any(self._evicting)

    # -- left padding (fed by nexusquant_evict's forward wrapper)

    def _take_prefill_pads(self, batch: int, tokens: int) -> list:
        pads = self._prefill_pads
        if pads is None or len(pads) != batch:
            return [0] * batch
        return [min(p, tokens) for p in pads]

    @property
    def ragged(self) -> bool:
        """Whether batch elements hold different numbers of compressed tokens (left-padded
        prompts): the model's 2D attention mask no longer lines up with the keys, and
        `attention_mask_for` must replace it."""
        lay = next((l for l in self.compressed_layers if l.segments is not None), None)
        return lay is not None and len(set(lay.counts)) > 1

    def attention_mask_for(self, batch: int, query_length: int, device) -> torch.Tensor:
        """The 2D attention mask ([batch, kv_offset + kv_length], 1 = attend) that matches
        what `update` will return for `query_length` new tokens: every element's
        compressed tokens are right-aligned, and the zero slots before them are masked.
        transformers slices it at [kv_offset, kv_offset + kv_length) (see get_mask_sizes)."""
        lay = next(l for l in self.compressed_layers if l.segments is not None)
        held = lay.stored + lay.window_length
        offset = lay.seen - held
        mask = torch.ones((batch, offset + held + query_length), dtype=torch.long, device=device)
        for b, n in enumerate(lay.counts):
            mask[b, :offset + lay.stored - n] = 0
        return mask

    # -- query scores (fed by nexusquant_evict's attention tap)

    def _note_prefill(self, layer: int):
        if self.scores == "queries" and self._evicting[layer] and _ACTIVE.get() is not self \
                and not self._warned_key_norm:
            self._warned_key_norm = True
            warnings.warn("nexusquant: this cache evicts but no query states reach it (it is not used inside "
                          "nexusquant_evict), so tokens are ranked by the key-norm proxy, which loses much more "
                          "quality, and left-padded prompts would be attended as tokens; run generate inside "
                          "nexusquant_evict(model, ...)", stacklevel=4)

    def _awaits_queries(self, layer: int) -> bool:
        return self.scores == "queries" and self._evicting[layer] and _ACTIVE.get() is self

    def _observe_queries(self, layer: int, query: torch.Tensor):
        """Called by the attention tap with a layer's query states [batch, q_heads, q, dim]."""
        lay = self.layers[layer] if layer < len(self.layers) else None
        if isinstance(lay, NexusQuantLayer) and lay._pending is not None:
            lay._resolve_pending(query)

    def _finish_pending(self):
        """Compresses (with the key-norm proxy) any prefill whose queries never came."""
        for lay in self.compressed_layers:
            lay._resolve_pending(None)

    @property
    def compressed_layers(self) -> list:
        return [l for l in self.layers if isinstance(l, NexusQuantLayer)]

    @property
    def compress_calls(self) -> int:
        """Library compress calls so far (one per layer and batch element per block)."""
        return sum(l.compress_calls for l in self.compressed_layers)

    def positions(self, layer: int, batch: int = 0, head: int = 0) -> np.ndarray:
        """Original positions of the keys the attention sees in (layer, batch, kv head)."""
        return self.layers[layer].positions(batch, head)

    def memory_report(self) -> dict:
        """What the cache really holds, in bytes.

        compressed_bytes        every byte of the library blocks (resident form: header,
                                positions, scales, codes, fp16 sinks/window, padding);
                                blocks shared by duplicated beams count once; the
                                handles (a few hundred bytes per sequence) do not count
        window_bytes            the full-precision tensors held (the recent window, and
                                any uncompressed layer)
        total_bytes             compressed_bytes + window_bytes
        fp16_equivalent_bytes   what a DynamicCache in fp16 would hold for the same tokens
                                (2 x layers x batch x kv_heads x head_dim x tokens x 2)
        dynamic_cache_bytes     the same in the model's own dtype (fp32 models: twice that)
        ratio                   fp16_equivalent_bytes / total_bytes
        tokens_seen             tokens that went through the model (padding included)
        tokens_attended         keys the attention gets per head (kept + window)
        layer_bits              per layer, the (K bits, V bits) of its first block (batch
                                element 0): presets choose them per block from the data
        transfer                see `transfer`

        This counts the cache and nothing else. Measuring it as the difference of
        torch.cuda.memory_allocated() before and after a forward also counts what that
        forward left alive besides the cache (the logits, [batch, T, vocab], are
        returned with it) and misses memory the library allocates outside torch (see
        the module docstring, "Measuring").
        """
        comp = win = fp16 = native = 0
        tokens = kept = 0
        layer_bits = []
        for layer in self.layers:
            if not getattr(layer, "is_initialized", False) or layer.keys is None:
                continue
            b, h, _, d = layer.keys.shape
            seen = layer.get_seq_length()
            fp16 += 2 * b * h * d * seen * 2
            native += 2 * b * h * d * seen * layer.keys.element_size()
            if isinstance(layer, NexusQuantLayer):
                blocks = layer.blocks(0)
                if blocks:
                    info = blocks[0].info()
                    layer_bits.append((info["k_bits"], info["v_bits"]))
                comp += layer.compressed_bytes()
                win += layer.window_bytes()
                tokens = max(tokens, seen)
                kept = max(kept, layer.stored + layer.window_length)
            else:
                win += layer.keys.numel() * layer.keys.element_size() * 2
        total = comp + win
        return {
            "compressed_bytes": comp,
            "window_bytes": win,
            "total_bytes": total,
            "fp16_equivalent_bytes": fp16,
            "dynamic_cache_bytes": native,
            "ratio": fp16 / total if total else float("nan"),
            "tokens_seen": tokens,
            "tokens_attended": kept,
            "layer_bits": layer_bits,
            "quality": self.quality,
            "transfer": self.transfer,
        }

    def __repr__(self):
        return f"NexusQuantCache(quality={self.quality!r}, layers={len(self.layers)})"


# ---------------------------------------------------------------------------- query tap

# The cache whose model forward is running in this thread (set by nexusquant_evict's
# forward wrapper): the attention tap hands it each layer's query states.
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("nexusquant_active_cache", default=None)
_TAP_LOCK = threading.Lock()
_TAPS: dict = {}  # attention implementation name -> [users, the local mapping entry it replaced]


def _attention_functions():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    return ALL_ATTENTION_FUNCTIONS


def _eager_attention_of(module):
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _make_tap(original):
    def nexusquant_attention_tap(module, query, key, value, attention_mask, *args, **kwargs):
        cache = _ACTIVE.get()
        if cache is not None and getattr(module, "layer_idx", None) is not None:
            cache._observe_queries(module.layer_idx, query)
        fn = original if original is not None else _eager_attention_of(module)
        return fn(module, query, key, value, attention_mask, *args, **kwargs)
    return nexusquant_attention_tap


def _install_tap(impl: str):
    """Routes the attention implementation `impl` through a tap that passes the query
    states to the active cache (a no-op for any forward that has no active cache)."""
    funcs = _attention_functions()
    with _TAP_LOCK:
        entry = _TAPS.get(impl)
        if entry is not None:
            entry[0] += 1
            return
        previous = funcs._local_mapping.get(impl, _MISSING)
        original = None if impl == "eager" and previous is _MISSING else funcs[impl]
        funcs[impl] = _make_tap(original)
        _TAPS[impl] = [1, previous]


def _remove_tap(impl: str):
    funcs = _attention_functions()
    with _TAP_LOCK:
        entry = _TAPS[impl]
        entry[0] -= 1
        if entry[0]:
            return
        del _TAPS[impl]
        if entry[1] is _MISSING:
            funcs._local_mapping.pop(impl, None)
        else:
            funcs._local_mapping[impl] = entry[1]


# ---------------------------------------------------------------------------- context manager


def _left_pads(attention_mask) -> Optional[list]:
    """Leading padding tokens of each row of a 2D attention mask (None without padding)."""
    if not torch.is_tensor(attention_mask) or attention_mask.ndim != 2 or bool(attention_mask.all()):
        return None
    m = attention_mask.bool()
    pads = (~m).sum(-1)
    # left padding: each row is zeros, then ones
    left = torch.arange(m.shape[1], device=m.device)[None, :] >= pads[:, None]
    if not bool((left == m).all()):
        raise NotImplementedError("nexusquant: only left padding is supported (each attention_mask row must be "
                                  "zeros followed by ones)")
    return [int(p) for p in pads.tolist()]


class nexusquant_evict:
    """Context manager: inside it, `model.generate(...)` and cached `model(...)` calls use
    a `NexusQuantCache`.

        with nexusquant_evict(model, quality="balanced") as nq:
            out = model.generate(ids, max_new_tokens=100)
        print(nq.last_report)   # the cache's memory_report() when generate returned

    `last_cache` is the most recent cache it created that is still alive (it holds no
    reference itself: generate drops its cache unless asked to return it).

    On entry it sets `generate` and `forward` as attributes of this model instance:
    wrappers that pass a fresh `NexusQuantCache` as `past_key_values` when the caller gave
    no cache and caching is on, and mark the cache as the running one so that the
    attention tap can hand it the prefill's query states (eviction scores). The tap is
    an entry for the model's attention implementation in transformers'
    `ALL_ATTENTION_FUNCTIONS` that calls the original function; it only acts on a
    forward run through a wrapper. On exit everything is put back exactly: the class
    methods (or an instance attribute that was already set, e.g. by accelerate hooks)
    and the attention function mapping. A cache passed in by the caller (a
    `NexusQuantCache` from an earlier turn, or any other cache) is used as given.

    What it cannot change: the outputs of the prefill pass itself. The compressed cache
    is only read by tokens processed after the prefill, so `model(ids, labels=ids).loss`
    is the same with and without it.

    Arguments are those of `NexusQuantCache` (quality, k_bits, v_bits, evict, window,
    chunk, rope, scores, query_window, num_threads, ...).
    """

    def __init__(self, model, quality: str = "lossless", **settings):
        self.model = model
        self.settings = dict(settings, quality=quality)
        # fail early on bad settings (unknown preset, bits out of range)
        NexusQuantCache(model, **self.settings)
        self._saved = None
        self._impl = None
        self._caches = []
        self.last_report: Optional[dict] = None  # memory_report() of the cache when the last generate returned

    # -- caches

    def new_cache(self) -> NexusQuantCache:
        cache = NexusQuantCache(self.model, **self.settings)
        self._caches.append(weakref.ref(cache))
        return cache

    @property
    def caches(self) -> list:
        """The caches this manager created that are still alive."""
        return [c for c in (r() for r in self._caches) if c is not None]

    @property
    def last_cache(self) -> Optional[NexusQuantCache]:
        for r in reversed(self._caches):
            c = r()
            if c is not None:
                return c
        return None

    # -- patching

    def __enter__(self):
        if self._saved is not None:
            raise RuntimeError("this nexusquant_evict is already active")
        model = self.model
        self._saved = {name: model.__dict__.get(name, _MISSING) for name in ("generate", "forward")}
        orig_generate, orig_forward = model.generate, model.forward
        fwd_sig = inspect.signature(orig_forward)

        @functools.wraps(orig_generate)
        def generate(*args, **kwargs):
            gen_cfg = kwargs.get("generation_config")
            use_cache = kwargs.get("use_cache", getattr(gen_cfg, "use_cache", True))
            if kwargs.get("past_key_values") is None and use_cache is not False \
                    and kwargs.get("cache_implementation") is None:
                kwargs["past_key_values"] = self.new_cache()
            cache = kwargs.get("past_key_values")
            out = orig_generate(*args, **kwargs)
            if isinstance(cache, NexusQuantCache):
                self.last_report = cache.memory_report()
            return out

        @functools.wraps(orig_forward)
        def forward(*args, **kwargs):
            try:
                call = fwd_sig.bind_partial(*args, **kwargs)
            except TypeError:
                return orig_forward(*args, **kwargs)
            bound = call.arguments
            cache = bound.get("past_key_values")
            if cache is None and "past_key_values" in fwd_sig.parameters:
                use_cache = bound.get("use_cache")
                if use_cache is None:
                    use_cache = getattr(model.config, "use_cache", False) and not model.training
                if use_cache:
                    cache = bound["past_key_values"] = self.new_cache()
            if not isinstance(cache, NexusQuantCache):
                return orig_forward(*call.args, **call.kwargs)
            mask = bound.get("attention_mask")
            if cache.get_seq_length() == 0:
                # the prefill attends with the caller's mask; the cache stores only the
                # real tokens of left-padded prompts
                cache._prefill_pads = _left_pads(mask)
            elif cache.ragged and "attention_mask" in fwd_sig.parameters:
                x = bound.get("input_ids")
                x = x if x is not None else bound.get("inputs_embeds")
                bound["attention_mask"] = cache.attention_mask_for(x.shape[0], x.shape[1], x.device)
            token = _ACTIVE.set(cache)
            try:
                return orig_forward(*call.args, **call.kwargs)
            finally:
                _ACTIVE.reset(token)
                cache._prefill_pads = None
                cache._finish_pending()

        impl = getattr(model.config, "_attn_implementation", None) or "eager"
        if isinstance(impl, str) and (impl == "eager" or impl in _attention_functions()):
            _install_tap(impl)
            self._impl = impl
        model.generate = generate
        model.forward = forward
        return self

    def __exit__(self, *exc):
        model = self.model
        for name, val in self._saved.items():
            if val is _MISSING:
                model.__dict__.pop(name, None)
            else:
                model.__dict__[name] = val
        if self._impl is not None:
            _remove_tap(self._impl)
            self._impl = None
        self._saved = None
        return False


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()
