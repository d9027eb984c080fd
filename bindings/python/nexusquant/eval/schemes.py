"""Scheme registry: a compression scheme is looked up by name.

A scheme turns the uncompressed prefill cache into the cache that attention
will see afterwards, and says how many bytes it would occupy:

    scheme.apply(cache, ctx) -> SchemeResult(cache, nbytes)

``ctx`` (SchemeContext) carries what eviction/RoPE-aware schemes need: the
model config, a RoPE function (to take RoPE off keys and put it back at the
original positions) and the last W post-RoPE queries of every layer.

Names are matched exactly first, then against registered patterns, so
parametrised variants like ``kivi2-g128-r32`` need no enumeration.

Library-backed schemes (presets lossless/high/balanced/max, E8 and scalar
codec points) come from ``library_schemes.library_schemes()`` and are
registered through ``LibraryAdapter`` below; they run the real C library via
the ctypes binding, which is loaded only when such a scheme is applied.
"""

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..model.kvcache import KVCache
from . import peers


@dataclass
class SchemeContext:
    config: object = None                  # LlamaConfig
    rope: Optional[Callable] = None        # rope(x, positions, inverse=False)
    queries: Optional[List[np.ndarray]] = None  # per layer [q_heads, W, d]
    model_name: str = ""                   # matched against model profiles (profiles.py)
    use_profiles: bool = True              # False: presets exactly as the C library has them


@dataclass
class SchemeResult:
    cache: KVCache
    nbytes: int
    layer_bits: Optional[List[Tuple[int, int]]] = None  # (k_bits, v_bits) each layer's block chose


class Scheme:
    name: str = "?"
    description: str = ""

    def apply(self, cache: KVCache, ctx: SchemeContext) -> SchemeResult:
        raise NotImplementedError


class LayerQuantiser(Scheme):
    """Adapter: a per-layer ``fn(k, v) -> (k_hat, v_hat, nbytes)`` from peers."""

    def __init__(self, name, fn, description=""):
        self.name, self.fn, self.description = name, fn, description

    def apply(self, cache, ctx):
        if not cache.is_dense():
            raise ValueError(f"{self.name} expects a dense (un-evicted) cache")
        ks, vs, total = [], [], 0
        for k, v in zip(cache.keys, cache.values):
            kh, vh, nb = self.fn(k, v)
            ks.append(kh)
            vs.append(vh)
            total += nb
        return SchemeResult(KVCache(ks, vs, list(cache.positions), cache.next_pos), total)


class Unavailable(Scheme):
    """Placeholder for a known name whose implementation is missing here; it
    fails loudly instead of silently falling back to something else."""

    def __init__(self, name, reason):
        self.name, self.reason = name, reason
        self.description = f"unavailable: {reason}"

    def apply(self, cache, ctx):
        raise RuntimeError(f"scheme {self.name!r} is unavailable: {self.reason}")


class LibraryAdapter(Scheme):
    """Runs a ``library_schemes.LibraryScheme`` (encode + decode through the C
    library; the byte count is the size of the library's encoded blocks)."""

    def __init__(self, lib_scheme):
        self.lib_scheme = lib_scheme
        self.name = lib_scheme.name
        self.description = "library: " + lib_scheme.name

    def apply(self, cache, ctx):
        cfg = ctx.config
        scheme = self.lib_scheme
        if not ctx.use_profiles and scheme.profile is not None:
            from dataclasses import replace
            scheme = replace(scheme, profile=None)
        out = scheme.apply(cache, q_heads=cfg.n_heads, rope_theta=cfg.rope_theta,
                           queries=ctx.queries, model_name=ctx.model_name, rope=ctx.rope)
        return SchemeResult(out[0], int(out[1]), out[2] if len(out) > 2 else None)


_EXACT: Dict[str, Callable[[], Scheme]] = {}
_PATTERNS: List[Tuple[re.Pattern, Callable[[re.Match], Scheme], str]] = []


def register(name: str, factory: Callable[[], Scheme]) -> None:
    _EXACT[name] = factory


def register_pattern(regex: str, factory: Callable[[re.Match], Scheme], example: str) -> None:
    _PATTERNS.append((re.compile(regex + r"\Z"), factory, example))


def get_scheme(name: str) -> Scheme:
    _ensure_registered()
    if name in _EXACT:
        return _EXACT[name]()
    for rx, factory, _ in _PATTERNS:
        m = rx.match(name)
        if m:
            return factory(m)
    raise KeyError(f"unknown scheme {name!r}; known: {', '.join(list_schemes())}")


def list_schemes() -> List[str]:
    _ensure_registered()
    return list(_EXACT) + [ex for _, _, ex in _PATTERNS]


# -- built-in reference schemes --------------------------------------------------
def _kivi(m: re.Match) -> Scheme:
    bits = int(m.group(1))
    g = int(m.group(2) or 32)
    r = int(m.group(3) or 128)
    return LayerQuantiser(m.group(0), lambda k, v: peers.kivi(k, v, bits, g, r),
                          f"KIVI int{bits}, group {g}, fp16 window {r}")


def _register_peers():
    for name, fn, desc in [
        ("fp16", peers.fp16, "half precision (ratio 1)"),
        ("fp8", peers.fp8, "fp8 e4m3, per-tensor fp32 scale"),
        ("q8_0", peers.q8_0, "llama.cpp q8_0 blocks of 32"),
        ("q4_0", peers.q4_0, "llama.cpp q4_0 blocks of 32"),
        ("q4_0h", peers.q4_0h, "q4_0 after a head_dim Hadamard rotation"),
    ]:
        register(name, lambda n=name, f=fn, d=desc: LayerQuantiser(n, f, d))
    # kivi2, kivi4, kivi2-g128, kivi4-g32-r32, ...
    register_pattern(r"kivi([248])(?:-g(\d+))?(?:-r(\d+))?", _kivi, "kivi{2,4}[-gG][-rR]")


_registered = False


def _ensure_registered():
    global _registered
    if _registered:
        return
    _registered = True
    _register_peers()
    _register_library()


def _register_library():
    # ---- library-backed schemes: everything named by library_schemes() ----
    try:
        from .library_schemes import PATTERN, library_schemes, parse_scheme
    except ImportError as e:  # binding module missing: keep the names, fail on use
        for name in ("lossless", "high", "balanced", "max"):
            register(name, lambda n=name, r=str(e): Unavailable(n, r))
        return
    for name, ls in library_schemes().items():
        register(name, lambda s=ls: LibraryAdapter(s))
    register_pattern(PATTERN, lambda m: LibraryAdapter(parse_scheme(m)), "{e8|scalar}-kKvV[-eE][-sS][-wW][-rR][-tT][-shared|-paged][-norm][-keep][-ck][-cv][-kc][-pP][-La:bkKvV]")
