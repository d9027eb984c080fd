"""Compression schemes backed by libnexusquant, applied to a model's KV cache.

Each layer's post-RoPE keys and values go through the library as one block (real
bytes: the ratio counts every byte of every block); the decoded keys come back rotated
at their original positions, with each head's kept positions, which is exactly what
the model attends to afterwards.
"""
from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..core import Context, RopeSpec
from ..model.kvcache import KVCache
from ..profiles import merge


@dataclass
class LibraryScheme:
    name: str
    preset: str = "custom"
    k_bits: Optional[int] = None
    v_bits: Optional[int] = None
    evict: Optional[float] = None
    codec: str = "e8"
    evict_mode: str = "per-head"
    fp16_sinks: Optional[int] = None
    fp16_window: Optional[int] = None
    sink_tokens: Optional[int] = None
    recent_window: Optional[int] = None
    overrides: list = field(default_factory=list)
    use_queries: bool = True   # observation-window query scores when the model gives them
    pool_kernel: int = 0       # max-pool width over query scores; 0 = the library's (15)
    profile: Optional[str] = None  # "auto": the model's profile for the preset (profiles.py)
    rope_mode: str = "remove"  # keys quantised with RoPE removed (re-applied on decode) or kept
    # Experimental, emulated here without a format change: subtract a per-(block, head)
    # mean over the block's quantised tokens (keys in the RoPE-removed domain), rounded to
    # fp16 and counted as head_dim * 2 bytes per head, before the library codes the block;
    # add it back after decoding. Needs the model's RoPE (passed as `rope`) for keys.
    center_k: bool = False
    center_v: bool = False
    # The library's own key centring (nq_config.key_centering, docs/FORMAT.md 1.8): the
    # per-(block, head) key mean is taken out and stored in the block by the C library.
    # On, as the library's default; "-nokc" schemes turn it off.
    key_centering: bool = True

    def settings(self, shape: dict, model_name: str) -> dict:
        """Context settings: the model profile's (when asked for and matching), then ours."""
        explicit = dict(k_bits=self.k_bits, v_bits=self.v_bits, evict=self.evict, codec=self.codec,
                        evict_mode=self.evict_mode, fp16_sinks=self.fp16_sinks, fp16_window=self.fp16_window,
                        sink_tokens=self.sink_tokens, recent_window=self.recent_window,
                        overrides=self.overrides or None)
        return merge(self.preset, shape, model_name, self.profile, explicit)

    def context(self, head_dim: int, kv_heads: int, q_heads: int, rope_theta: float, n_layers: int,
                model_name: str = "") -> Context:
        shape = {"num_layers": n_layers, "num_q_heads": q_heads, "num_kv_heads": kv_heads, "head_dim": head_dim}
        return Context(head_dim, kv_heads, q_heads, preset=self.preset, num_layers=n_layers,
                       rope=RopeSpec(mode=self.rope_mode, pairing="split", theta=rope_theta),
                       key_centering=self.key_centering, **self.settings(shape, model_name))

    def apply(self, cache: KVCache, *, q_heads: int, rope_theta: float, queries=None, model_name: str = "",
              rope=None):
        """Returns (new KVCache, compressed bytes, [(k_bits, v_bits) of each layer's block]).

        queries: optional per-layer [q_heads, W, head_dim] last queries (post-RoPE).
        model_name: matched against the model profiles when self.profile is "auto".
        rope: the model's rope(x, positions, inverse=False); needed by center_k."""
        if self.center_k or self.center_v:
            return self._apply_centered(cache, q_heads=q_heads, rope_theta=rope_theta, model_name=model_name,
                                        rope=rope, queries=queries)
        kv_heads = cache.n_kv_heads
        head_dim = cache.keys[0][0].shape[-1]
        ctx = self.context(head_dim, kv_heads, q_heads, rope_theta, cache.n_layers, model_name)
        keys, values, positions, bits = [], [], [], []
        total = 0
        for layer in range(cache.n_layers):
            k = np.ascontiguousarray(np.asarray(cache.keys[layer], dtype=np.float32))
            v = np.ascontiguousarray(np.asarray(cache.values[layer], dtype=np.float32))
            pos = np.asarray(cache.positions[layer])[0]
            q = None
            if self.use_queries and queries is not None:
                q = np.ascontiguousarray(queries[layer], dtype=np.float32)
            blk = ctx.compress(k, v, layer=layer, positions=pos, queries=q, pool_kernel=self.pool_kernel)
            info = blk.info()
            total += info["resident_bytes"]
            bits.append((info["k_bits"], info["v_bits"]))
            kd, vd = ctx.decode(blk, dtype="float32")
            keys.append(kd)
            values.append(vd)
            positions.append(np.stack([blk.positions(h) for h in range(kv_heads)]))
            blk.free()
        out = KVCache(keys, values, positions, cache.next_pos)
        return out, total, bits

    def _apply_centered(self, cache: KVCache, *, q_heads: int, rope_theta: float, model_name: str, rope,
                        queries=None):
        """center_k / center_v: the library codes (x - mean) per head; keys with RoPE taken
        off here by the model's own RoPE (library RoPE mode none) and put back after decode.
        The mean is over the block's quantised (not fp16) kept tokens. With eviction, a first
        pass through the library as configured picks the kept tokens (and gives the block's
        bytes: the codes are fixed-rate, so centring changes no size but the mean's); the
        second pass codes the kept tokens, centred, without eviction."""
        from dataclasses import replace
        if self.center_k and rope is None:
            raise ValueError("center_k needs the model's RoPE")
        kv_heads = cache.n_kv_heads
        head_dim = cache.keys[0][0].shape[-1]
        if self.key_centering:
            raise ValueError("the library's key centring and the emulated centring (-ck / -cv) are exclusive")
        first = replace(self, center_k=False, center_v=False)
        ctx1 = first.context(head_dim, kv_heads, q_heads, rope_theta, cache.n_layers, model_name)
        keys, values, positions, bits = [], [], [], []
        total = 0

        def centre(x, lp):
            # mean over the tokens the codec quantises (fp16 sinks and window excluded)
            t = x.shape[1]
            a, b = min(lp["fp16_sinks"], t), max(t - lp["fp16_window"], 0)
            sel = x[:, a:b] if b > a else x
            m = sel.mean(axis=1, keepdims=True).astype(np.float16).astype(np.float32)
            return np.ascontiguousarray(x - m), m

        for layer in range(cache.n_layers):
            lp = ctx1.layer_params(layer)
            k = np.asarray(cache.keys[layer], dtype=np.float32)
            v = np.asarray(cache.values[layer], dtype=np.float32)
            pos = np.asarray(cache.positions[layer])[0]
            if lp["evict_fraction"] > 0:
                q = None
                if self.use_queries and queries is not None:
                    q = np.ascontiguousarray(queries[layer], dtype=np.float32)
                blk = ctx1.compress(np.ascontiguousarray(k), np.ascontiguousarray(v), layer=layer, positions=pos,
                                    queries=q, pool_kernel=self.pool_kernel)
                info = blk.info()
                kpos = np.stack([blk.positions(h) for h in range(kv_heads)])
                blk.free()
                idx = np.searchsorted(pos, kpos)          # [heads, kept] token indices
                k = np.take_along_axis(k, idx[..., None], axis=1)
                v = np.take_along_axis(v, idx[..., None], axis=1)
            else:
                info, kpos = None, np.broadcast_to(pos, (kv_heads, len(pos)))
            # second pass: the kept tokens, no eviction, same bits and fp16 tokens
            second = replace(self, center_k=False, center_v=False, preset="custom", evict=0.0,
                             k_bits=lp["k_bits"], v_bits=lp["v_bits"], fp16_sinks=lp["fp16_sinks"],
                             fp16_window=lp["fp16_window"], overrides=[], profile=None,
                             rope_mode="none" if self.center_k else self.rope_mode)
            ctx2 = second.context(head_dim, kv_heads, q_heads, rope_theta, cache.n_layers, model_name)
            mk = mv = None
            if self.center_k:
                k, mk = centre(rope(k, kpos, inverse=True), lp)
                total += kv_heads * head_dim * 2
            if self.center_v:
                v, mv = centre(v, lp)
                total += kv_heads * head_dim * 2
            blk = ctx2.compress(np.ascontiguousarray(k), np.ascontiguousarray(v), layer=layer,
                                positions=np.ascontiguousarray(kpos[0]), queries=None)
            if info is None:
                info = blk.info()
            total += info["resident_bytes"]
            bits.append((info["k_bits"], info["v_bits"]))
            kd, vd = ctx2.decode(blk, dtype="float32")
            blk.free()
            ctx2.free()
            if self.center_k:
                kd = rope(kd + mk, kpos)
            if self.center_v:
                vd = vd + mv
            keys.append(np.ascontiguousarray(kd, dtype=np.float32))
            values.append(np.ascontiguousarray(vd, dtype=np.float32))
            positions.append(np.ascontiguousarray(kpos))
        return KVCache(keys, values, positions, cache.next_pos), total, bits


def library_schemes() -> dict:
    """Named schemes: the presets, plus explicit E8 and scalar-codec points at equal bits."""
    s = {}
    # a preset name applies the model's profile when there is one (profiles.py: per-layer
    # bits tuned on that model); "-generic" is the preset exactly as the C library has it
    for preset in ("lossless", "high", "balanced", "max"):
        s[preset] = LibraryScheme(preset, preset=preset, profile="auto")
        s[preset + "-generic"] = LibraryScheme(preset + "-generic", preset=preset)
    # the SmolLM2-135M profile by name (the tuning runs' name for it)
    s["lossless-smollm2"] = LibraryScheme("lossless-smollm2", preset="lossless", profile="smollm2-135m")
    # rotated keys quantised as they are (what attention over compressed blocks reads
    # without a per-key decode): the quality side of that choice
    s["lossless-keep"] = LibraryScheme("lossless-keep", preset="lossless", profile="auto", rope_mode="keep")
    # the library's key centring (nq_config.key_centering, on by default) and without it
    s["lossless-kc"] = LibraryScheme("lossless-kc", preset="lossless", profile="auto", key_centering=True)
    for preset in ("lossless", "balanced"):
        s[preset + "-nokc"] = LibraryScheme(preset + "-nokc", preset=preset, profile="auto", key_centering=False)
        s[preset + "-generic-nokc"] = LibraryScheme(preset + "-generic-nokc", preset=preset, key_centering=False)
    s["lossless-generic-keep"] = LibraryScheme("lossless-generic-keep", preset="lossless", rope_mode="keep")
    s["balanced-generic-keep"] = LibraryScheme("balanced-generic-keep", preset="balanced", rope_mode="keep")
    # experimental: the generic presets with the per-head key and value means taken out
    for preset in ("lossless", "high", "balanced", "max"):
        s[preset + "-generic-ck-cv"] = LibraryScheme(preset + "-generic-ck-cv", preset=preset,
                                                     center_k=True, center_v=True, key_centering=False)
    for kb, vb in ((4, 4), (4, 3), (3, 3), (3, 2), (2, 2)):
        for codec in ("e8", "scalar"):
            name = f"{codec}-k{kb}v{vb}"
            s[name] = LibraryScheme(name, k_bits=kb, v_bits=vb, evict=0.0, codec=codec)
    return s


# A library point named on the command line, for tuning runs (options in any order):
#   {e8|scalar}-k{K}v{V}[-e{evict}][-s{fp16 sinks}][-w{fp16 window}][-r{recent window}]
#                      [-t{sink tokens}][-shared|-paged][-norm][-keep][-p{pool}][-L{a}:{b}k{K}v{V}...]
#                      [-ck][-cv]   (experimental: per-head mean of keys / values taken out, see center_k)
#                      [-kc|-nokc]  (the library's key centring, nq_config.key_centering: on by
#                                    default; -ck / -cv turn it off for their emulation)
# e.g. e8-k3v2-e0.6-w16-r16, e8-k2v2-e0.4-shared, e8-k3v2-L0:2k4v3 (layers 0..1 at K4/V3).
_OPTION = r"-e[0-9.]+|-[swrtp]\d+|-shared|-paged|-norm|-keep|-ck|-cv|-kc|-nokc|-L-?\d+:-?\d+k\dv\d"
PATTERN = r"(e8|scalar)-k(\d)v(\d)((?:" + _OPTION + r")*)"


def parse_scheme(m) -> LibraryScheme:
    codec, kb, vb, rest = m.groups()
    s = LibraryScheme(m.group(0), k_bits=int(kb), v_bits=int(vb), evict=0.0, codec=codec)
    fields = {"s": "fp16_sinks", "w": "fp16_window", "r": "recent_window", "t": "sink_tokens", "p": "pool_kernel"}
    for opt in re.findall(_OPTION, rest or ""):
        if opt.startswith("-L"):
            a, b, k, v = re.match(r"-L(-?\d+):(-?\d+)k(\d)v(\d)", opt).groups()
            s.overrides.append({"layers": (int(a), int(b)), "k_bits": int(k), "v_bits": int(v)})
        elif opt.startswith("-e"):
            s.evict = float(opt[2:])
        elif opt in ("-shared", "-paged"):
            s.evict_mode = opt[1:]
        elif opt == "-norm":
            s.use_queries = False
        elif opt == "-keep":
            s.rope_mode = "keep"
        elif opt == "-ck":
            s.center_k = True
            s.key_centering = False
        elif opt == "-cv":
            s.center_v = True
            s.key_centering = False
        elif opt == "-kc":
            s.key_centering = True
        elif opt == "-nokc":
            s.key_centering = False
        else:
            setattr(s, fields[opt[1]], int(opt[2:]))
    return s
