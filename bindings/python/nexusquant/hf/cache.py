"""NexusQuantCache: a transformers `Cache` whose full-attention layers are compressed by
libnexusquant."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from transformers.cache_utils import Cache

from ..core import Context, RopeSpec
from ..profiles import merge as merge_profile
from .compat import attach_error, check_cache_api
from .config import _layer_plan, _model_name, _plain_layer, _text_config, model_shape, rope_spec_from_config
from .devices import library_has_cuda
from .layer import NexusQuantLayer
from .report import memory_report
from .attention import MAX_QUERY_TOKENS, attend_layer
from .scores import ACTIVE, TAPPED


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
        attention: how a forward after the prefill attends over the compressed tokens.
            "attend" (default): inside `nexusquant_evict`, a step of at most 64 new
            tokens per layer runs the library's attention over the blocks as they are
            (`Context.attend`, output and log-sum-exp) and torch attention over the
            full-precision window and new tokens, merged by log-sum-exp; the compressed
            tokens are never decoded. Longer steps, forwards with autograd on, and a
            cache used outside the manager (no attention tap) decode instead. "decode":
            always decode the compressed tokens (the unfused path).
        **context_kwargs: any other `core.Context` setting (sink_tokens, recent_window,
            fp16_sinks, fp16_window, codec, evict_mode, overrides, ...).

    Layers that are not full attention (sliding window, chunked, linear attention) keep
    the ordinary transformers layer for their type, uncompressed: a sliding layer holds
    at most its window (Gemma-3: 512 tokens), which its transformers layer already
    trims as tokens slide out, whereas the library's blocks are append-only (a block
    cannot drop its oldest tokens without being re-encoded). `memory_report` counts those
    layers as transformers holds them. A model whose every layer slides (Mistral-7B-v0.1's
    config) has nothing to compress, and the constructor says so.

    Attention after the prefill: see `attention` (and the module docstring).
    """

    def __init__(self, model_or_config, quality: str = "lossless", *, k_bits: Optional[int] = None,
                 v_bits: Optional[int] = None, evict: Optional[float] = None, window: int = 32, chunk: int = 32,
                 rope: Optional[RopeSpec] = None, scores: str = "queries", query_window: int = 32,
                 num_threads: Optional[int] = None, transfer: str = "auto", profile: Optional[str] = "auto",
                 attention: str = "attend", **context_kwargs):
        check_cache_api()
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
        if attention not in ("attend", "decode"):
            raise ValueError("attention must be 'attend' or 'decode'")
        self.attention = attention
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
        if not any(isinstance(l, NexusQuantLayer) for l in layers):
            raise NotImplementedError(
                f"nexusquant: no layer of this model is full attention (layer types: {sorted(set(layer_types))}); "
                "sliding-window layers stay uncompressed, so this cache would compress nothing")
        try:
            super().__init__(layers=layers)
        except TypeError as e:
            raise attach_error(f"Cache(layers=...) failed ({e})") from None
        self._transfer = None if transfer == "auto" else transfer

    # -- properties

    @property
    def transfer(self) -> str:
        """How K/V reach the library: "host" (CPU tensors by pointer), "device" (CUDA
        tensors by device pointer: the library has a CUDA backend; the blocks live in GPU
        memory; scoring, eviction, compress and decode run on torch's current stream) or
        "host-staging" (the library has no CUDA backend, or transfer="host-staging" was
        asked for: CUDA tensors are copied to host memory, compressed and decoded by the
        CPU backend, and the decoded tensors copied back; the blocks live in host memory;
        a decode step that attends over the blocks copies its queries to host memory,
        attends on the CPU backend and copies the outputs back)."""
        dev = next((l.device for l in self.layers if getattr(l, "is_initialized", False)
                    and getattr(l, "device", None) is not None), None)
        if dev is None or dev.type == "cpu":
            return "host"
        if self._transfer is None:
            self._transfer = "device" if library_has_cuda() else "host-staging"
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
        if self.scores == "queries" and self._evicting[layer] and ACTIVE.get() is not self \
                and not self._warned_key_norm:
            self._warned_key_norm = True
            warnings.warn("nexusquant: this cache evicts but no query states reach it (it is not used inside "
                          "nexusquant_evict), so tokens are ranked by the key-norm proxy, which loses much more "
                          "quality, and left-padded prompts would be attended as tokens; run generate inside "
                          "nexusquant_evict(model, ...)", stacklevel=4)

    def _awaits_queries(self, layer: int) -> bool:
        return self.scores == "queries" and self._evicting[layer] and ACTIVE.get() is self

    def _observe_queries(self, layer: int, query: torch.Tensor):
        """Called by the attention tap with a layer's query states [batch, q_heads, q, dim]."""
        lay = self.layers[layer] if layer < len(self.layers) else None
        if isinstance(lay, NexusQuantLayer) and lay._pending is not None:
            lay._resolve_pending(query)

    def _finish_pending(self) -> list:
        """Compresses (with the key-norm proxy) any prefill whose queries never came and
        returns those layers' indices (inside nexusquant_evict that means the attention
        did not go through the tap: an attach failure, never a silent fallback)."""
        missed = [lay.layer_idx for lay in self.compressed_layers if lay._pending is not None]
        for lay in self.compressed_layers:
            lay._resolve_pending(None)
        return missed

    # -- attention over the blocks (fed by nexusquant_evict's attention tap)

    def _attends(self, layer: NexusQuantLayer, key_states: torch.Tensor) -> bool:
        """Whether this step of `layer` attends over the blocks (the tap is in the
        forward's path) instead of decoding them."""
        return (self.attention == "attend" and TAPPED.get() is self and layer.stored > 0
                and 0 < key_states.shape[-2] <= MAX_QUERY_TOKENS
                and not (torch.is_grad_enabled() and key_states.requires_grad))

    def _attention(self, module, query, key, value, attention_mask, kwargs):
        """Called by the attention tap for every layer: the attention output of a
        compressed layer whose step attends over its blocks, else None (the model's own
        attention function runs)."""
        layer = getattr(module, "layer_idx", None)
        lay = self.layers[layer] if layer is not None and layer < len(self.layers) else None
        if not isinstance(lay, NexusQuantLayer) or lay._attend_blocks is None:
            return None
        return attend_layer(lay, module, query, key, value, attention_mask, kwargs)

    def _finish_attention(self) -> list:
        """Layers whose step attended over the blocks but whose attention never reached
        the tap (their attention saw only the tail: an attach failure)."""
        missed = [lay.layer_idx for lay in self.compressed_layers if lay._attend_blocks is not None]
        for lay in self.compressed_layers:
            lay._attend_blocks = None
        return missed

    @property
    def decode_calls(self) -> int:
        """Layer forwards after the prefill that decoded the compressed tokens."""
        return sum(l.decode_calls for l in self.compressed_layers)

    @property
    def attend_calls(self) -> int:
        """Layer forwards after the prefill that attended over the blocks as they are."""
        return sum(l.attend_calls for l in self.compressed_layers)

    @property
    def compressed_layers(self) -> list:
        return [l for l in self.layers if isinstance(l, NexusQuantLayer)]

    @property
    def uncompressed_layers(self) -> list:
        """Indices of the layers kept as transformers' own (sliding window, chunked)."""
        return [i for i, l in enumerate(self.layers) if not isinstance(l, NexusQuantLayer)]

    @property
    def compress_calls(self) -> int:
        """Library compress calls so far (one per layer and batch element per block)."""
        return sum(l.compress_calls for l in self.compressed_layers)

    def positions(self, layer: int, batch: int = 0, head: int = 0) -> np.ndarray:
        """Original positions of the keys the attention sees in (layer, batch, kv head)."""
        return self.layers[layer].positions(batch, head)

    def memory_report(self) -> dict:
        """What the cache really holds, in bytes, against what transformers' own
        DynamicCache would hold for the same tokens (see `report.memory_report`)."""
        return memory_report(self)

    def __repr__(self):
        return f"NexusQuantCache(quality={self.quality!r}, layers={len(self.layers)})"

