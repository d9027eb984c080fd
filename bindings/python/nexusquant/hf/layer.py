"""One compressed attention layer of a NexusQuantCache: library sequences per batch
element plus a full-precision window of recent tokens."""
from __future__ import annotations

import weakref
from typing import Optional

import numpy as np
import torch
from transformers.cache_utils import CacheLayerMixin

from .. import _lib as L
from ..core import Block
from .devices import _host_copy, _safe_view
from .scores import query_scores

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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
        self.decode_calls = 0    # forwards whose attention decoded the compressed tokens
        self.attend_calls = 0    # forwards whose attention read the blocks (Context.attend)
        self._attend_blocks = None  # blocks per element awaiting the attention tap
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
        block per batch element and keeps nothing else. Later calls, when the cache
        attends (`NexusQuantCache.attention`, inside `nexusquant_evict`): returns only the
        full-precision window + the new tokens, and the attention tap adds the attention
        over the blocks. Otherwise: returns the decoded compressed tokens + the window +
        the new tokens (a full decode of the layer).
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
        if self._cache._attends(self, key_states):
            # decode step through the library's attention: the compressed tokens are not
            # decoded; the attention tap attends over these blocks and over the tail
            # returned here (the window and the new tokens), then merges the two
            self._attend_blocks = [self.blocks(b) for b in range(len(self.segments))]
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            tail_k, tail_v = self.keys, self.values
            self.seen += q
            self._flush()  # after the snapshot: the tail still holds what it flushes
            return tail_k, tail_v
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
        self._attend_blocks = None
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
                scores = query_scores(qb, kb, cache.shape["num_kv_heads"])
                if transfer != "device":  # the CPU backend reads host scores
                    scores = scores.cpu()
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
            self.decode_calls += 1
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


