"""nexusquant_evict: the context manager that makes a model's generate and cached forward
calls use a NexusQuantCache (model patching and the attention tap's lifetime)."""
from __future__ import annotations

import contextvars
import functools
import inspect
import weakref
from typing import Optional

import torch

from .cache import NexusQuantCache
from .compat import attach_error, cache_argument
from .config import _text_config
from .scores import ACTIVE, TAPPED, _MISSING, install_tap, remove_tap, tappable

# Set while a wrapped generate runs: its forwards leave last_report to generate.
_IN_GENERATE: contextvars.ContextVar = contextvars.ContextVar("nexusquant_in_generate", default=False)


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


def _masks_per_layer_type(model, cache, x, ragged, mask, position_ids) -> dict:
    """The attention masks of a forward on a left-padded batch of a model with sliding
    layers, as the model's own `{layer type: mask}` mapping (which transformers' hybrid
    models accept in place of a 2D mask): the full-attention layers (compressed, keys
    right-aligned per element) get `ragged`, the sliding layers (transformers' own,
    padded token axis) the caller's 2D mask."""
    from transformers import masking_utils
    makers = {"full_attention": "create_causal_mask", "sliding_attention": "create_sliding_window_causal_mask",
              "chunked_attention": "create_chunked_causal_mask"}
    types = set(getattr(_text_config(model.config), "layer_types", None) or ())
    if not types or not types <= set(makers) or not all(hasattr(masking_utils, makers[t]) for t in types):
        raise attach_error(f"a left-padded batch needs one attention mask per layer type, and the layer types "
                           f"{sorted(types)} have no known mask function")
    b, q = x.shape[:2]
    # the mask functions read only the shape, dtype and device of the embeddings
    embeds = torch.empty((b, q, 1), dtype=model.dtype, device=x.device)
    if position_ids is None:
        position_ids = (torch.arange(q, device=x.device) + cache.get_seq_length())[None]
    out = {}
    for kind in types:
        fn = getattr(masking_utils, makers[kind])
        cache_kw = cache_argument(fn, f"transformers.masking_utils.{makers[kind]}")
        out[kind] = fn(config=_text_config(model.config), inputs_embeds=embeds,
                       attention_mask=ragged if kind == "full_attention" else mask, position_ids=position_ids,
                       **{cache_kw: cache})
    return out


class nexusquant_evict:
    """Context manager: inside it, `model.generate(...)` and cached `model(...)` calls use
    a `NexusQuantCache`.

        with nexusquant_evict(model, quality="balanced") as nq:
            out = model.generate(ids, max_new_tokens=100)
        print(nq.last_report)   # the cache's memory_report() when the call returned

    `last_cache` is the most recent cache it created that is still alive (it holds no
    reference itself: generate drops its cache unless asked to return it).

    `last_report` is the memory_report() of the cache after the last call inside the
    block that used a NexusQuantCache (a generate, or a model(...) forward).

    On entry it sets `generate` and `forward` as attributes of this model instance:
    wrappers that pass a fresh `NexusQuantCache` under the keyword the model's forward
    takes its cache by (`cache` on transformers 5.2x, `past_key_values` before) when the
    caller gave no cache and caching is on, and mark the cache as the running one so that the
    attention tap can hand it the prefill's query states (eviction scores). The tap is
    an entry for the model's attention implementation in transformers'
    `ALL_ATTENTION_FUNCTIONS` that calls the original function; it only acts on a
    forward run through a wrapper. On exit everything is put back exactly: the class
    methods (or an instance attribute that was already set, e.g. by accelerate hooks)
    and the attention function mapping. A cache passed in by the caller (a
    `NexusQuantCache` from an earlier turn, or any other cache) is used as given.

    It never fails silently: when the model's forward takes its cache under no known
    keyword, when the attention implementation cannot be tapped while the settings evict
    by query scores, or when a prefill's queries never reach the tap, it raises
    `AttachError` naming the installed transformers release.

    What it cannot change: the outputs of the prefill pass itself. The compressed cache
    is only read by tokens processed after the prefill, so `model(ids, labels=ids).loss`
    is the same with and without it.

    Arguments are those of `NexusQuantCache` (quality, k_bits, v_bits, evict, window,
    chunk, rope, scores, query_window, num_threads, ...).
    """

    def __init__(self, model, quality: str = "lossless", **settings):
        self.model = model
        self.settings = dict(settings, quality=quality)
        # fail early on bad settings (unknown preset, bits out of range) or an unknown Cache API
        probe = NexusQuantCache(model, **self.settings)
        self._needs_queries = probe.evicts and probe.scores == "queries"
        self._saved = None
        self._impl = None
        self._caches = []
        self.last_report: Optional[dict] = None  # memory_report() after the last call that used a NexusQuantCache

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
        orig_generate, orig_forward = model.generate, model.forward
        fwd_sig = inspect.signature(orig_forward)
        # the keyword the model takes its cache by; generate hands its cache to the
        # forward under the same one (raises AttachError when there is none)
        cache_name = cache_argument(orig_forward, f"{type(model).__name__}.forward")
        var_kw = next((n for n, p in fwd_sig.parameters.items() if p.kind is p.VAR_KEYWORD), None)
        impl = getattr(model.config, "_attn_implementation", None) or "eager"
        if not tappable(impl):
            if self._needs_queries:
                raise attach_error(f"the attention implementation {impl!r} is not in ALL_ATTENTION_FUNCTIONS, so the "
                                   "prefill's queries cannot reach the cache (eviction scores); use "
                                   "attn_implementation='sdpa' or 'eager', or scores='key-norm'")
            impl = None

        def passed_cache(bound: dict):
            extra = bound.get(var_kw) if var_kw else None
            for where in (bound, extra or {}):
                for name in ("cache", "past_key_values"):
                    if where.get(name) is not None:
                        return where[name]
            return None

        @functools.wraps(orig_generate)
        def generate(*args, **kwargs):
            gen_cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)
            use_cache = kwargs.get("use_cache", getattr(gen_cfg, "use_cache", True))
            cache = passed_cache(kwargs)
            if cache is None and use_cache is not False and kwargs.get("cache_implementation") is None:
                cache = kwargs[cache_name] = self.new_cache()
            token = _IN_GENERATE.set(True)
            try:
                out = orig_generate(*args, **kwargs)
            finally:
                _IN_GENERATE.reset(token)
            if isinstance(cache, NexusQuantCache):
                self.last_report = cache.memory_report()
            return out

        @functools.wraps(orig_forward)
        def forward(*args, **kwargs):
            try:
                call = fwd_sig.bind_partial(*args, **kwargs)
            except TypeError:
                return orig_forward(*args, **kwargs)  # the model's own error for a bad call
            bound = call.arguments
            cache = passed_cache(bound)
            if cache is None:
                use_cache = bound.get("use_cache")
                if use_cache is None:
                    use_cache = getattr(model.config, "use_cache", False) and not model.training
                if use_cache:
                    cache = bound[cache_name] = self.new_cache()
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
                ragged = cache.attention_mask_for(x.shape[0], x.shape[1], x.device)
                if cache.uncompressed_layers:
                    # the compressed layers' keys are right-aligned per element while the
                    # sliding layers keep transformers' padded token axis: one mask per type
                    bound["attention_mask"] = _masks_per_layer_type(model, cache, x, ragged, mask,
                                                                    bound.get("position_ids"))
                else:
                    bound["attention_mask"] = ragged
            token = ACTIVE.set(cache)
            tapped = TAPPED.set(cache if impl is not None else None)
            done = False
            try:
                out = orig_forward(*call.args, **call.kwargs)
                done = True
            finally:
                TAPPED.reset(tapped)
                ACTIVE.reset(token)
                cache._prefill_pads = None
                missed = cache._finish_pending()
                unattended = cache._finish_attention()
            if done and unattended:
                raise attach_error(f"the attention of layers {unattended} never reached nexusquant's attention tap "
                                   f"(attention implementation {impl!r}), so it saw only their recent tokens; the "
                                   "output of this forward is wrong")
            if done and missed:
                raise attach_error(f"the prefill's queries of layers {missed} never reached nexusquant's attention "
                                   f"tap (attention implementation {impl!r}), so eviction could not be scored by "
                                   "them; the layers were compressed with the key-norm proxy instead")
            if not _IN_GENERATE.get():
                self.last_report = cache.memory_report()
            return out

        self._saved = {name: model.__dict__.get(name, _MISSING) for name in ("generate", "forward")}
        if impl is not None:
            install_tap(impl)
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
            remove_tap(self._impl)
            self._impl = None
        self._saved = None
        return False
