"""What the integration reads off a model's config: its shape, its RoPE, its layer types."""
from __future__ import annotations

import inspect
import math
import sys
import warnings

from transformers.cache_utils import DynamicSlidingWindowLayer

try:  # transformers >= 5.2x
    from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, get_layer_types_and_kwargs
except ImportError:  # pragma: no cover - older 5.x
    DYNAMIC_LAYER_TYPE_MAPPING, get_layer_types_and_kwargs = None, None

from ..core import RopeSpec

# Model types whose rotary embedding pairs (2i, 2i+1) rather than (i, i + d/2), for when
# only a config is given (with a model, its modeling file's rotate_half is read).
_INTERLEAVED_ROPE = {"gptj", "cohere", "cohere2", "glm", "glm4", "ernie4_5", "ernie4_5_moe"}


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

