"""Loads libnexusquant and declares its C structs and functions with ctypes.

The struct layouts below are copies of include/nexusquant.h; `check_layouts()` compares
every size and field offset with what the loaded library reports (nq_abi_sizeof /
nq_abi_offsetof) so that a header change cannot silently corrupt memory.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

c_int = ctypes.c_int
u32 = ctypes.c_uint32
i32 = ctypes.c_int32
i64 = ctypes.c_int64
u64 = ctypes.c_uint64
f32 = ctypes.c_float
f64 = ctypes.c_double
size_t = ctypes.c_size_t
vp = ctypes.c_void_p

# The header version this module was written against (NQ_VERSION_NUMBER).
EXPECTED_MAJOR = 0
EXPECTED_MINOR = 1


class Rope(ctypes.Structure):
    _fields_ = [("mode", c_int), ("pairing", c_int), ("rotary_dims", u32), ("original_max_position", u32),
                ("theta", f64), ("scaling", c_int), ("reserved0", u32), ("factor", f64),
                ("low_freq_factor", f64), ("high_freq_factor", f64), ("beta_fast", f64), ("beta_slow", f64),
                ("attention_factor", f64)]


ALLOC_FN = ctypes.CFUNCTYPE(vp, vp, size_t, size_t, c_int, i32)
FREE_FN = ctypes.CFUNCTYPE(None, vp, vp, c_int, i32)


class Allocator(ctypes.Structure):
    _fields_ = [("alloc", ALLOC_FN), ("free", FREE_FN), ("user", vp)]


class LayerOverride(ctypes.Structure):
    _fields_ = [("layer_begin", u32), ("layer_end", u32), ("k_bits", u32), ("v_bits", u32),
                ("evict_fraction", f32), ("reserved0", u32)]


class Config(ctypes.Structure):
    _fields_ = [("size", size_t), ("head_dim", u32), ("num_kv_heads", u32), ("num_q_heads", u32),
                ("num_layers", u32), ("preset", c_int), ("codec", c_int), ("k_bits", u32), ("v_bits", u32),
                ("evict_fraction", f32), ("target_ratio", f32), ("evict_mode", c_int), ("evict_page_size", u32),
                ("sink_tokens", i32), ("recent_window", i32), ("fp16_sinks", i32), ("fp16_window", i32),
                ("rope", Rope), ("backend", c_int), ("device", i32), ("cpu_isa", c_int), ("num_threads", u32),
                ("allocator", Allocator), ("overrides", ctypes.POINTER(LayerOverride)), ("num_overrides", u32),
                ("archive_zstd_level", i32), ("key_centering", u32)]


class LayerParams(ctypes.Structure):
    _fields_ = [("size", size_t), ("k_bits", u32), ("v_bits", u32), ("evict_fraction", f32),
                ("sink_tokens", u32), ("recent_window", u32), ("fp16_sinks", u32), ("fp16_window", u32)]


class Layout(ctypes.Structure):
    _fields_ = [("kind", c_int), ("page_size", u32), ("stride_head", i64), ("stride_token", i64),
                ("stride_dim", i64), ("stride_page", i64), ("page_table", ctypes.POINTER(i32)),
                ("num_pages", u32), ("reserved0", u32)]


class KvDesc(ctypes.Structure):
    _fields_ = [("size", size_t), ("dtype", c_int), ("memory", c_int), ("device", i32), ("layer", u32),
                ("num_tokens", u32), ("rope_seq_len", u32), ("k", vp), ("v", vp), ("k_layout", Layout),
                ("v_layout", Layout), ("positions", ctypes.POINTER(i64)), ("start_position", i64)]


class ScoreDesc(ctypes.Structure):
    _fields_ = [("size", size_t), ("kind", c_int), ("memory", c_int), ("scores", ctypes.POINTER(f32)),
                ("score_stride_head", i64), ("score_stride_token", i64), ("queries", vp), ("query_dtype", c_int),
                ("num_queries", u32), ("q_stride_head", i64), ("q_stride_token", i64), ("q_stride_dim", i64),
                ("query_positions", ctypes.POINTER(i64)), ("pool_kernel", u32), ("reserved0", u32)]


class Buffer(ctypes.Structure):
    _fields_ = [("data", vp), ("capacity", size_t)]


class BlockInfo(ctypes.Structure):
    _fields_ = [("size", size_t), ("layer", u32), ("num_heads", u32), ("head_dim", u32), ("tokens_in", u32),
                ("tokens_kept", u32), ("k_bits", u32), ("v_bits", u32), ("codec", c_int), ("evict_mode", c_int),
                ("rope_mode", c_int), ("fp16_sinks", u32), ("fp16_window", u32), ("positions_per_head", u32),
                ("memory", c_int), ("device", i32), ("reserved0", u32), ("first_position", i64),
                ("last_position", i64), ("original_bytes", u64), ("resident_bytes", u64), ("ratio", f64),
                ("header_bytes", u64), ("position_bytes", u64), ("scale_bytes", u64), ("code_bytes", u64),
                ("fp16_bytes", u64), ("padding_bytes", u64), ("key_mean_bytes", u64)]


class BlockPeekInfo(ctypes.Structure):
    _fields_ = [("size", size_t), ("is_archive", u32), ("header_valid", u32), ("layer", u32), ("num_heads", u32),
                ("head_dim", u32), ("tokens_in", u32), ("tokens_kept", u32), ("k_bits", u32), ("v_bits", u32),
                ("codec", c_int), ("evict_mode", c_int), ("rope_mode", c_int), ("fp16_sinks", u32),
                ("fp16_window", u32), ("positions_per_head", u32), ("reserved0", u32), ("first_position", i64),
                ("resident_bytes", u64), ("stored_bytes", u64)]


class AttentionDesc(ctypes.Structure):
    _fields_ = [("size", size_t), ("memory", c_int), ("device", i32), ("num_seqs", u32), ("q_tokens", u32),
                ("dtype", c_int), ("reserved0", u32), ("block_images", ctypes.POINTER(vp)),
                ("block_indptr", ctypes.POINTER(u32)), ("q", vp), ("q_stride_seq", i64), ("q_stride_token", i64),
                ("q_stride_head", i64), ("out", vp), ("out_stride_seq", i64), ("out_stride_token", i64),
                ("out_stride_head", i64), ("lse", ctypes.POINTER(f32)), ("q_positions", ctypes.POINTER(i64)),
                ("scale", f32), ("softcap", f32), ("window", u32), ("num_splits", u32)]


STRUCTS = {"nq_rope": Rope, "nq_allocator": Allocator, "nq_layer_override": LayerOverride, "nq_config": Config,
           "nq_layer_params": LayerParams, "nq_layout": Layout, "nq_kv_desc": KvDesc, "nq_score_desc": ScoreDesc,
           "nq_buffer": Buffer, "nq_block_info": BlockInfo, "nq_block_peek_info": BlockPeekInfo,
           "nq_attention_desc": AttentionDesc}

P = ctypes.POINTER
# name: (restype, argtypes)
FUNCTIONS = {
    "nq_version_number": (u32, []),
    "nq_version_string": (ctypes.c_char_p, []),
    "nq_status_string": (ctypes.c_char_p, [c_int]),
    "nq_last_error": (ctypes.c_char_p, []),
    "nq_preset_from_name": (c_int, [ctypes.c_char_p, P(c_int)]),
    "nq_preset_name": (ctypes.c_char_p, [c_int]),
    "nq_config_init": (None, [P(Config)]),
    "nq_kv_desc_init": (None, [P(KvDesc)]),
    "nq_layout_contiguous": (None, [P(Layout), u32, u32]),
    "nq_score_desc_init": (None, [P(ScoreDesc)]),
    "nq_context_create": (c_int, [P(Config), P(vp)]),
    "nq_context_free": (None, [vp]),
    "nq_context_get_config": (c_int, [vp, P(Config)]),
    "nq_context_layer_params": (c_int, [vp, u32, P(LayerParams)]),
    "nq_context_cpu_isa": (ctypes.c_char_p, [vp]),
    "nq_context_backend": (c_int, [vp]),
    "nq_compress_bound": (c_int, [vp, P(KvDesc), P(size_t)]),
    "nq_workspace_size": (c_int, [vp, P(KvDesc), size_t, P(size_t)]),
    "nq_kv_cache_bytes": (u64, [u64, u64, u64, u64, u64]),
    "nq_estimate_bytes": (c_int, [vp, u32, u64, P(u64)]),
    "nq_compress_kv": (c_int, [vp, P(KvDesc), P(ScoreDesc), vp, P(vp)]),
    "nq_compress_batch": (c_int, [vp, P(KvDesc), P(ScoreDesc), size_t, P(Buffer), vp, size_t, vp, P(vp), P(c_int)]),
    "nq_decode_block": (c_int, [vp, vp, u32, u32, P(KvDesc), vp]),
    "nq_decode": (c_int, [vp, vp, u32, u32, P(KvDesc), vp]),
    "nq_block_get_info": (c_int, [vp, P(BlockInfo)]),
    "nq_block_peek": (c_int, [vp, size_t, P(BlockPeekInfo)]),
    "nq_block_positions": (c_int, [vp, u32, u32, u32, P(i64)]),
    "nq_block_data": (c_int, [vp, P(vp), P(size_t)]),
    "nq_block_digest": (c_int, [vp, P(u64)]),
    "nq_block_serialize_bound": (c_int, [vp, P(size_t)]),
    "nq_block_serialize": (c_int, [vp, vp, vp, size_t, P(size_t)]),
    "nq_block_deserialize": (c_int, [vp, vp, size_t, P(vp)]),
    "nq_block_free": (None, [vp]),
    "nq_sequence_create": (c_int, [vp, u32, P(vp)]),
    "nq_sequence_append": (c_int, [vp, P(KvDesc), P(ScoreDesc), vp]),
    "nq_sequence_append_block": (c_int, [vp, vp]),
    "nq_sequence_num_blocks": (size_t, [vp]),
    "nq_sequence_block": (vp, [vp, size_t]),
    "nq_sequence_totals": (c_int, [vp, P(u64), P(u64), P(u64)]),
    "nq_sequence_decode": (c_int, [vp, u32, u32, P(KvDesc), vp]),
    "nq_sequence_positions": (c_int, [vp, u32, u32, u32, P(i64)]),
    "nq_sequence_free": (None, [vp]),
    "nq_attention_desc_init": (None, [P(AttentionDesc)]),
    "nq_attention_workspace_size": (c_int, [vp, P(AttentionDesc), P(size_t)]),
    "nq_attention_decode": (c_int, [vp, P(AttentionDesc), vp, size_t, vp]),
    "nq_attention_merge": (c_int, [P(f32), P(f32), P(f32), P(f32), size_t, u32]),
    "nq_abi_sizeof": (size_t, [ctypes.c_char_p]),
    "nq_abi_offsetof": (size_t, [ctypes.c_char_p, ctypes.c_char_p]),
}


class LayoutMismatch(RuntimeError):
    pass


def _candidates():
    env = os.environ.get("NEXUSQUANT_LIBRARY")
    if env:
        yield env
        return
    here = Path(__file__).resolve().parent
    for name in ("libnexusquant.so", "libnexusquant.so.0", "libnexusquant.dylib"):
        p = here / name
        if p.exists():
            yield str(p)
    found = ctypes.util.find_library("nexusquant")
    if found:
        yield found
    yield "libnexusquant.so.0"


def _fields(cls, prefix=""):
    for name, typ in cls._fields_:
        off = getattr(cls, name).offset
        yield prefix + name, off, typ
        if isinstance(typ, type) and issubclass(typ, ctypes.Structure):
            for sub, suboff, subtyp in _fields(typ, prefix + name + "."):
                yield sub, off + suboff, subtyp


def check_layouts(lib):
    """Raises LayoutMismatch if any struct here differs from the library's."""
    bad = []
    for cname, cls in STRUCTS.items():
        n = lib.nq_abi_sizeof(cname.encode())
        if n != ctypes.sizeof(cls):
            bad.append(f"sizeof({cname}): library {n}, binding {ctypes.sizeof(cls)}")
        for field, off, _ in _fields(cls):
            lo = lib.nq_abi_offsetof(cname.encode(), field.encode())
            if lo != off:
                bad.append(f"offsetof({cname}, {field}): library {lo}, binding {off}")
    if bad:
        raise LayoutMismatch("libnexusquant struct layouts differ from this binding:\n  " + "\n  ".join(bad))


def load():
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
            continue
        for name, (res, args) in FUNCTIONS.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        ver = lib.nq_version_number()
        major, minor = ver // 10000, (ver // 100) % 100
        if major != EXPECTED_MAJOR or minor < EXPECTED_MINOR:
            raise ImportError(f"{path} is libnexusquant {lib.nq_version_string().decode()}, "
                              f"this binding needs {EXPECTED_MAJOR}.{EXPECTED_MINOR}.x")
        check_layouts(lib)
        lib._nq_path = path
        return lib
    raise ImportError("libnexusquant not found (set NEXUSQUANT_LIBRARY to the .so path): " + "; ".join(errors))


_LIB = None


def lib():
    global _LIB
    if _LIB is None:
        _LIB = load()
    return _LIB
