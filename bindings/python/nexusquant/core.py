"""Pythonic wrappers over libnexusquant: Context, Block, Sequence.

Arrays are numpy arrays or torch tensors shaped [kv_heads, tokens, head_dim], with any
strides. Supported dtypes: float16, float32, and bfloat16 (torch.bfloat16, ml_dtypes'
bfloat16, or numpy uint16 bit patterns with dtype="bfloat16"). CUDA tensors are passed
as device pointers (they need a library built with the CUDA backend).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _lib as L

DTYPE = {"float16": 1, "bfloat16": 2, "float32": 3}
MEMORY_HOST, MEMORY_CUDA = 0, 1
CODEC = {"e8": 1, "scalar": 2}
EVICT = {"per-head": 1, "per_head": 1, "shared": 2, "head-shared": 2, "paged": 3}
ROPE_MODE = {"none": 0, "remove": 1, "keep": 2}
PAIRING = {"split": 1, "split-half": 1, "interleaved": 2}
SCALING = {None: 0, "none": 0, "linear": 1, "dynamic": 2, "dynamic-ntk": 2, "llama3": 3, "yarn": 4}
ISA = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}
BACKEND = {"auto": 0, "cpu": 1, "cuda": 2, "hip": 3}


class NexusQuantError(RuntimeError):
    """A failing library call: `status` is the nq_status, the message the library's."""

    def __init__(self, status: int, message: str):
        self.status = status
        name = L.lib().nq_status_string(status).decode().split(":")[0]
        super().__init__(f"{name}: {message}")


def _check(status: int):
    if status != 0:
        raise NexusQuantError(status, L.lib().nq_last_error().decode())


@dataclass
class RopeSpec:
    """RoPE as the model applies it to keys (Hugging Face semantics)."""
    mode: str = "remove"          # none | remove | keep
    pairing: str = "split"        # split | interleaved
    theta: float = 10000.0
    rotary_dims: int = 0          # 0 = head_dim
    scaling: Optional[str] = None  # linear | dynamic | llama3 | yarn
    factor: float = 1.0
    original_max_position: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float = 0.0


class _View:
    """A raw pointer + element strides view of a numpy array or torch tensor."""

    def __init__(self, x, dtype_hint=None, writable=False):
        self.keep = x
        mod = type(x).__module__
        if mod.startswith("torch"):
            name = str(x.dtype).replace("torch.", "")
            self.ptr = x.data_ptr()
            self.strides = tuple(x.stride())
            self.memory = MEMORY_CUDA if x.is_cuda else MEMORY_HOST
            self.device = x.device.index or 0 if x.is_cuda else 0
        else:
            x = np.asarray(x)
            self.keep = x
            if writable and not x.flags.writeable:
                raise ValueError("output array is read-only")
            name = x.dtype.name
            if name == "uint16" and dtype_hint == "bfloat16":
                name = "bfloat16"
            if any(s % x.itemsize for s in x.strides):
                raise ValueError("array strides are not multiples of the element size")
            self.ptr = x.ctypes.data
            self.strides = tuple(s // x.itemsize for s in x.strides)
            self.memory, self.device = MEMORY_HOST, 0
        if name not in DTYPE:
            raise TypeError(f"unsupported dtype {name}: use float16, bfloat16 or float32")
        self.dtype = DTYPE[name]
        self.shape = tuple(x.shape)


def _layout(view: _View) -> L.Layout:
    lay = L.Layout()
    lay.kind = 1
    lay.stride_head, lay.stride_token, lay.stride_dim = view.strides
    return lay


def _check_kv_shape(kv: _View, vv: _View, kv_heads: int, head_dim: int) -> None:
    # The library trusts the descriptor's head count and head_dim (they come from the
    # context), so an array of another shape would be read with the wrong meaning or
    # past its end: refuse it here, where the array's own shape is still known.
    if len(kv.shape) != 3 or len(vv.shape) != 3:
        raise ValueError(f"k and v must both be 3-D [kv_heads, tokens, head_dim]; got shapes {kv.shape} and {vv.shape}")
    if kv.shape != vv.shape:
        raise ValueError(f"k and v shapes differ: k {kv.shape}, v {vv.shape}; both must be [kv_heads, tokens, head_dim]")
    heads, tokens, dim = kv.shape
    if heads != kv_heads:
        hint = ""
        if tokens == kv_heads:
            hint = " (it looks like [tokens, kv_heads, head_dim]: pass k.transpose(1, 0, 2) and v likewise)"
        raise ValueError(f"k and v shape {kv.shape}: dimension 0 (kv_heads) is {heads}, the context has "
                         f"num_kv_heads={kv_heads}; arrays are [kv_heads, tokens, head_dim]{hint}")
    if dim != head_dim:
        raise ValueError(f"k and v shape {kv.shape}: dimension 2 (head_dim) is {dim}, the context has "
                         f"head_dim={head_dim}; arrays are [kv_heads, tokens, head_dim]")


def _kv_desc(kv: _View, vv: _View, layer: int, positions, start_position: int, ctx: "Context") -> tuple:
    _check_kv_shape(kv, vv, ctx.num_kv_heads, ctx.head_dim)
    if kv.dtype != vv.dtype or kv.memory != vv.memory:
        raise ValueError("k and v must have the same dtype and device")
    d = L.KvDesc()
    L.lib().nq_kv_desc_init(ctypes.byref(d))
    d.dtype, d.memory, d.device = kv.dtype, kv.memory, kv.device
    d.layer = layer
    d.num_tokens = kv.shape[1]
    d.k, d.v = kv.ptr, vv.ptr
    d.k_layout, d.v_layout = _layout(kv), _layout(vv)
    keep = None
    if positions is not None:
        keep = np.ascontiguousarray(np.asarray(positions, dtype=np.int64))
        if keep.shape != (kv.shape[1],):
            raise ValueError(f"positions must have shape ({kv.shape[1]},)")
        d.positions = keep.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
    d.start_position = start_position
    return d, keep


def _score_desc(scores, queries, query_positions, pool_kernel, ctx: "Context", tokens: int) -> tuple:
    if scores is None and queries is None:
        return None, None
    s = L.ScoreDesc()
    L.lib().nq_score_desc_init(ctypes.byref(s))
    keep = []
    if scores is not None and type(scores).__module__.startswith("torch"):
        # a float32 torch tensor where it lives (host or device memory: the GPU backend
        # reads device scores without a copy)
        if str(scores.dtype) != "torch.float32" or scores.dim() != 2:
            raise ValueError(f"scores must be a float32 [kv_heads, tokens] tensor; got {scores.dtype} "
                             f"{tuple(scores.shape)}")
        a = _View(scores)
        keep.append(a)
        s.kind, s.memory = 1, a.memory
        s.scores = ctypes.cast(a.ptr, ctypes.POINTER(ctypes.c_float))
        s.score_stride_head, s.score_stride_token = a.strides
    elif scores is not None:
        a = np.ascontiguousarray(np.asarray(scores, dtype=np.float32))
        if a.shape != (ctx.num_kv_heads, tokens):
            raise ValueError(f"scores shape {a.shape}: must be [kv_heads, tokens] = ({ctx.num_kv_heads}, {tokens})")
        keep.append(a)
        s.kind = 1
        s.scores = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        s.score_stride_head, s.score_stride_token = a.strides[0] // 4, a.strides[1] // 4
    else:
        q = _View(queries)
        q_heads = ctx.num_q_heads or ctx.num_kv_heads
        if len(q.shape) != 3 or q.shape[0] != q_heads or q.shape[2] != ctx.head_dim:
            raise ValueError(f"queries shape {q.shape}: must be [q_heads, queries, head_dim] with "
                             f"q_heads={q_heads} and head_dim={ctx.head_dim}")
        keep.append(q)
        s.kind = 2
        s.queries = q.ptr
        s.query_dtype = q.dtype
        s.memory = q.memory
        s.num_queries = q.shape[1]
        s.q_stride_head, s.q_stride_token, s.q_stride_dim = q.strides
        if query_positions is not None:
            qp = np.ascontiguousarray(np.asarray(query_positions, dtype=np.int64))
            if qp.shape != (q.shape[1],):
                raise ValueError(f"query_positions shape {qp.shape}: must be ({q.shape[1]},), one per query")
            keep.append(qp)
            s.query_positions = qp.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
        s.pool_kernel = pool_kernel
    return s, keep


class Block:
    """One compressed (layer, sequence, chunk): real bytes owned by the library."""

    def __init__(self, handle: int, ctx: "Context", owned: bool = True):
        self._h = ctypes.c_void_p(handle)
        self._ctx = ctx  # decoding needs a matching context; keep it alive
        self._owned = owned

    def __del__(self):
        self.free()

    def free(self):
        if getattr(self, "_owned", False) and self._h:
            L.lib().nq_block_free(self._h)
        self._h = ctypes.c_void_p(None)

    @property
    def handle(self):
        if not self._h:
            raise ValueError("block was freed")
        return self._h

    def info(self) -> dict:
        i = L.BlockInfo()
        i.size = ctypes.sizeof(i)
        _check(L.lib().nq_block_get_info(self.handle, ctypes.byref(i)))
        return {name: getattr(i, name) for name, _ in i._fields_ if name not in ("size", "reserved0")}

    @property
    def nbytes(self) -> int:
        """Every byte of the resident block."""
        return self.info()["resident_bytes"]

    @property
    def ratio(self) -> float:
        return self.info()["ratio"]

    @property
    def tokens_kept(self) -> int:
        return self.info()["tokens_kept"]

    def positions(self, head: int = 0) -> np.ndarray:
        n = self.tokens_kept
        out = np.empty(n, dtype=np.int64)
        _check(L.lib().nq_block_positions(self.handle, head, 0, n, out.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))))
        return out

    def digest(self) -> int:
        d = ctypes.c_uint64()
        _check(L.lib().nq_block_digest(self.handle, ctypes.byref(d)))
        return d.value

    def resident_bytes(self) -> bytes:
        p, n = ctypes.c_void_p(), ctypes.c_size_t()
        _check(L.lib().nq_block_data(self.handle, ctypes.byref(p), ctypes.byref(n)))
        return ctypes.string_at(p, n.value)

    def serialize(self) -> bytes:
        lib = L.lib()
        cap = ctypes.c_size_t()
        _check(lib.nq_block_serialize_bound(self.handle, ctypes.byref(cap)))
        buf = ctypes.create_string_buffer(cap.value)
        n = ctypes.c_size_t()
        _check(lib.nq_block_serialize(self._ctx.handle, self.handle, buf, cap, ctypes.byref(n)))
        return buf.raw[: n.value]


class Sequence:
    """A growing (layer, sequence): the prefill, then appended chunks."""

    def __init__(self, ctx: "Context", layer: int = 0):
        self._ctx = ctx
        h = ctypes.c_void_p()
        _check(L.lib().nq_sequence_create(ctx.handle, layer, ctypes.byref(h)))
        self._h = h

    def __del__(self):
        self.free()

    def free(self):
        if getattr(self, "_h", None):
            L.lib().nq_sequence_free(self._h)
        self._h = ctypes.c_void_p(None)

    def append(self, k, v, *, positions=None, start_position: int = 0, scores=None, queries=None,
               query_positions=None, pool_kernel: int = 0, dtype: Optional[str] = None, stream=None):
        """stream: a cudaStream_t (int) for device pointers; None = the default stream."""
        kv, vv = _View(k, dtype), _View(v, dtype)
        d, keep_pos = _kv_desc(kv, vv, 0, positions, start_position, self._ctx)
        s, keep_s = _score_desc(scores, queries, query_positions, pool_kernel, self._ctx, kv.shape[1])
        _check(L.lib().nq_sequence_append(self._h, ctypes.byref(d), ctypes.byref(s) if s is not None else None,
                                          stream))

    def totals(self) -> dict:
        t, b, o = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64()
        _check(L.lib().nq_sequence_totals(self._h, ctypes.byref(t), ctypes.byref(b), ctypes.byref(o)))
        return {"tokens": t.value, "bytes": b.value, "original_bytes": o.value}

    @property
    def num_tokens(self) -> int:
        return self.totals()["tokens"]

    @property
    def nbytes(self) -> int:
        return self.totals()["bytes"]

    @property
    def num_blocks(self) -> int:
        return L.lib().nq_sequence_num_blocks(self._h)

    def positions(self, head: int = 0, begin: int = 0, end: Optional[int] = None) -> np.ndarray:
        end = self.num_tokens if end is None else end
        out = np.empty(end - begin, dtype=np.int64)
        _check(L.lib().nq_sequence_positions(self._h, head, begin, end,
                                             out.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))))
        return out

    def decode(self, begin: int = 0, end: Optional[int] = None, dtype: str = "float32", out=None, stream=None):
        """stream: a cudaStream_t (int) when out is on the device; None = the default stream."""
        end = self.num_tokens if end is None else end
        return self._ctx._decode_into(
            lambda d: L.lib().nq_sequence_decode(self._h, begin, end, ctypes.byref(d), stream),
            end - begin, dtype, out)


class Context:
    """Settings + backend for compressing KV of one model shape.

    preset: lossless | high | conservative | balanced | max | aggressive | S | M | L | XL | custom
    k_bits / v_bits / evict override the preset; target_ratio plans bits and eviction.
    key_centering codes keys minus their per-(block, head) mean (on by default, as in
    the C library; False codes them as they are).
    """

    def __init__(self, head_dim: int, num_kv_heads: int, num_q_heads: int = 0, *, preset: str = "lossless",
                 k_bits: Optional[int] = None, v_bits: Optional[int] = None, evict: Optional[float] = None,
                 target_ratio: float = 0.0, evict_mode: str = "per-head", evict_page_size: int = 0,
                 sink_tokens: Optional[int] = None, recent_window: Optional[int] = None,
                 fp16_sinks: Optional[int] = None, fp16_window: Optional[int] = None, codec: str = "e8",
                 rope: Optional[RopeSpec] = None, backend: str = "auto", device: int = 0, cpu_isa: str = "auto",
                 num_threads: int = 0, overrides=None, num_layers: int = 0, zstd_level: int = 0,
                 key_centering: bool = True):
        lib = L.lib()
        c = L.Config()
        lib.nq_config_init(ctypes.byref(c))
        c.head_dim, c.num_kv_heads, c.num_q_heads, c.num_layers = head_dim, num_kv_heads, num_q_heads, num_layers
        p = ctypes.c_int()
        _check(lib.nq_preset_from_name(preset.encode(), ctypes.byref(p)))
        c.preset = p.value
        if k_bits is not None:
            c.k_bits = k_bits
        if v_bits is not None:
            c.v_bits = v_bits
        if evict is not None:
            c.evict_fraction = evict
        c.target_ratio = target_ratio
        c.evict_mode = EVICT[evict_mode]
        c.evict_page_size = evict_page_size
        for name, val in (("sink_tokens", sink_tokens), ("recent_window", recent_window),
                          ("fp16_sinks", fp16_sinks), ("fp16_window", fp16_window)):
            if val is not None:
                setattr(c, name, val)
        c.codec = CODEC[codec]
        r = rope or RopeSpec()
        c.rope.mode, c.rope.pairing = ROPE_MODE[r.mode], PAIRING[r.pairing]
        c.rope.theta, c.rope.rotary_dims = r.theta, r.rotary_dims
        c.rope.scaling, c.rope.factor = SCALING[r.scaling], r.factor
        c.rope.original_max_position = r.original_max_position
        c.rope.low_freq_factor, c.rope.high_freq_factor = r.low_freq_factor, r.high_freq_factor
        c.rope.beta_fast, c.rope.beta_slow, c.rope.attention_factor = r.beta_fast, r.beta_slow, r.attention_factor
        c.backend, c.device, c.cpu_isa, c.num_threads = BACKEND[backend], device, ISA[cpu_isa], num_threads
        c.archive_zstd_level = zstd_level
        c.key_centering = 1 if key_centering else 0
        self._overrides = None
        if overrides:
            arr = (L.LayerOverride * len(overrides))()
            for i, o in enumerate(overrides):
                arr[i].layer_begin, arr[i].layer_end = o["layers"]
                arr[i].k_bits, arr[i].v_bits = o.get("k_bits", 0), o.get("v_bits", 0)
                arr[i].evict_fraction = o.get("evict", -1.0)
            self._overrides = arr
            c.overrides, c.num_overrides = arr, len(overrides)
        h = ctypes.c_void_p()
        _check(lib.nq_context_create(ctypes.byref(c), ctypes.byref(h)))
        self._h = h
        self.head_dim, self.num_kv_heads = head_dim, num_kv_heads
        self.num_q_heads = num_q_heads or num_kv_heads

    def __del__(self):
        self.free()

    def free(self):
        if getattr(self, "_h", None):
            L.lib().nq_context_free(self._h)
        self._h = ctypes.c_void_p(None)

    @property
    def handle(self):
        if not self._h:
            raise ValueError("context was freed")
        return self._h

    @property
    def cpu_isa(self) -> str:
        return L.lib().nq_context_cpu_isa(self.handle).decode()

    def layer_params(self, layer: int = 0) -> dict:
        p = L.LayerParams()
        p.size = ctypes.sizeof(p)
        _check(L.lib().nq_context_layer_params(self.handle, layer, ctypes.byref(p)))
        return {n: getattr(p, n) for n, _ in p._fields_ if n != "size"}

    def compress(self, k, v, *, layer: int = 0, positions=None, start_position: int = 0, scores=None,
                 queries=None, query_positions=None, pool_kernel: int = 0, dtype: Optional[str] = None) -> Block:
        """Compresses k, v ([kv_heads, tokens, head_dim]) into a Block.

        scores: [kv_heads, tokens] float32 importance (higher = keep); queries:
        [q_heads, W, head_dim] last queries (post-RoPE); neither = key-norm proxy.
        """
        kv, vv = _View(k, dtype), _View(v, dtype)
        d, keep_pos = _kv_desc(kv, vv, layer, positions, start_position, self)
        s, keep_s = _score_desc(scores, queries, query_positions, pool_kernel, self, kv.shape[1])
        h = ctypes.c_void_p()
        _check(L.lib().nq_compress_kv(self.handle, ctypes.byref(d), ctypes.byref(s) if s is not None else None,
                                      None, ctypes.byref(h)))
        return Block(h.value, self)

    def compress_bound(self, k, v, *, layer: int = 0, positions=None, start_position: int = 0,
                       dtype: Optional[str] = None) -> int:
        kv, vv = _View(k, dtype), _View(v, dtype)
        d, keep = _kv_desc(kv, vv, layer, positions, start_position, self)
        n = ctypes.c_size_t()
        _check(L.lib().nq_compress_bound(self.handle, ctypes.byref(d), ctypes.byref(n)))
        return n.value

    def _decode_into(self, call, n: int, dtype: str, out):
        if out is None:
            shape = (self.num_kv_heads, n, self.head_dim)
            out = (np.empty(shape, dtype=np.dtype(dtype)), np.empty(shape, dtype=np.dtype(dtype)))
        ko, vo = _View(out[0], writable=True), _View(out[1], writable=True)
        if ko.shape != (self.num_kv_heads, n, self.head_dim) or vo.shape != ko.shape:
            raise ValueError(f"outputs must be [{self.num_kv_heads}, {n}, {self.head_dim}]")
        d = L.KvDesc()
        L.lib().nq_kv_desc_init(ctypes.byref(d))
        d.dtype, d.memory, d.device = ko.dtype, ko.memory, ko.device
        d.num_tokens = n
        d.k, d.v = ko.ptr, vo.ptr
        d.k_layout, d.v_layout = _layout(ko), _layout(vo)
        _check(call(d))
        return out

    def decode(self, block: Block, begin: int = 0, end: Optional[int] = None, dtype: str = "float32", out=None):
        """Decodes kept tokens [begin, end) into (k, v) arrays [kv_heads, n, head_dim]."""
        end = block.tokens_kept if end is None else end
        return self._decode_into(
            lambda d: L.lib().nq_decode_block(self.handle, block.handle, begin, end, ctypes.byref(d), None),
            end - begin, dtype, out)

    def attend(self, blocks, q, *, scale: Optional[float] = None, softcap: float = 0.0, window: int = 0,
               q_positions=None, stream=None):
        """Attention of queries over compressed blocks, read as they are (nq_attention_decode).

        blocks: a Block, a list of Blocks (in order of position) or a Sequence, all of this
        context's shape. q: [q_heads, head_dim] or [tokens, q_heads, head_dim] (numpy, or a
        torch tensor; float16, bfloat16 or float32), RoPE applied as the model applies it.
        scale: softmax scale (default 1/sqrt(head_dim)); softcap: logit soft-cap (0 = none);
        q_positions: the position of each query token (int or [tokens]) for the causal mask,
        and window > 0 (a sliding window in positions) needs them.
        Returns (out, lse): out like q, lse float32 [q_heads] or [tokens, q_heads], the
        natural log-sum-exp of the logits (-inf where no key is visible) for merging with
        attention over other keys. A CUDA tensor q needs blocks in device memory and a
        library built with the GPU backend.
        """
        if isinstance(blocks, Sequence):
            handles = [L.lib().nq_sequence_block(blocks._h, i) for i in range(blocks.num_blocks)]
        elif isinstance(blocks, Block):
            handles = [blocks.handle.value]
        else:
            handles = [b.handle.value for b in blocks]
        is_torch = type(q).__module__.startswith("torch")
        squeeze = len(q.shape) == 2
        if len(q.shape) not in (2, 3) or q.shape[-1] != self.head_dim or q.shape[-2] != self.num_q_heads:
            raise ValueError(f"q must be [q_heads={self.num_q_heads}, head_dim={self.head_dim}] or "
                             f"[tokens, q_heads, head_dim]; got {tuple(q.shape)}")
        if is_torch:
            q3 = q.unsqueeze(0) if squeeze else q
            if q3.stride(-1) != 1:
                q3 = q3.contiguous()
            out = q3.new_empty(q3.shape)
            import torch
            lse = torch.empty(q3.shape[:2], dtype=torch.float32, device=q3.device)
            lse_ptr = lse.data_ptr()
        else:
            q3 = np.asarray(q)
            q3 = q3[None] if squeeze else q3
            if q3.strides[-1] != q3.itemsize:
                q3 = np.ascontiguousarray(q3)
            out = np.empty(q3.shape, dtype=q3.dtype)
            lse = np.empty(q3.shape[:2], dtype=np.float32)
            lse_ptr = lse.ctypes.data
        qv, ov = _View(q3), _View(out, writable=True)
        T = q3.shape[0]
        lib = L.lib()
        images = []
        for h in handles:
            p, n = ctypes.c_void_p(), ctypes.c_size_t()
            _check(lib.nq_block_data(h, ctypes.byref(p), ctypes.byref(n)))
            images.append(p.value)
        d = L.AttentionDesc()
        lib.nq_attention_desc_init(ctypes.byref(d))
        d.memory, d.device, d.dtype = qv.memory, qv.device, qv.dtype
        d.num_seqs, d.q_tokens = 1, T
        keep = []
        if qv.memory == MEMORY_HOST:
            table = (ctypes.c_void_p * max(1, len(images)))(*images)
            indptr = (ctypes.c_uint32 * 2)(0, len(images))
            keep += [table, indptr]
            d.block_images = ctypes.cast(table, ctypes.POINTER(ctypes.c_void_p))
            d.block_indptr = ctypes.cast(indptr, ctypes.POINTER(ctypes.c_uint32))
        else:  # the table lives where the kernel reads it
            import torch
            table = torch.tensor(images or [0], dtype=torch.int64, device=q3.device)
            indptr = torch.tensor([0, len(images)], dtype=torch.int32, device=q3.device)
            keep += [table, indptr]
            d.block_images = ctypes.cast(ctypes.c_void_p(table.data_ptr()), ctypes.POINTER(ctypes.c_void_p))
            d.block_indptr = ctypes.cast(ctypes.c_void_p(indptr.data_ptr()), ctypes.POINTER(ctypes.c_uint32))
        d.q, d.out = qv.ptr, ov.ptr
        d.q_stride_token, d.q_stride_head = qv.strides[0], qv.strides[1]
        d.out_stride_token, d.out_stride_head = ov.strides[0], ov.strides[1]
        d.q_stride_seq = d.out_stride_seq = 0  # one sequence
        d.lse = ctypes.cast(ctypes.c_void_p(lse_ptr), ctypes.POINTER(ctypes.c_float))
        if q_positions is not None:
            qp = np.ascontiguousarray(np.broadcast_to(np.asarray(q_positions, dtype=np.int64), (T,)))
            if qv.memory != MEMORY_HOST:
                import torch
                qp = torch.from_numpy(qp).to(q3.device)
                d.q_positions = ctypes.cast(ctypes.c_void_p(qp.data_ptr()), ctypes.POINTER(ctypes.c_int64))
            else:
                d.q_positions = qp.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
            keep.append(qp)
        elif window:
            raise ValueError("window needs q_positions")
        d.scale = 0.0 if scale is None else float(scale)
        d.softcap = float(softcap)
        d.window = int(window)
        _check(lib.nq_attention_decode(self.handle, ctypes.byref(d), None, 0, stream))
        if squeeze:
            return out[0], lse[0]
        return out, lse

    def deserialize(self, data: bytes) -> Block:
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        h = ctypes.c_void_p()
        _check(L.lib().nq_block_deserialize(self.handle, buf, len(data), ctypes.byref(h)))
        return Block(h.value, self)

    def sequence(self, layer: int = 0) -> Sequence:
        return Sequence(self, layer)

    def estimate_bytes(self, layers: int, tokens: int) -> int:
        n = ctypes.c_uint64()
        _check(L.lib().nq_estimate_bytes(self.handle, layers, tokens, ctypes.byref(n)))
        return n.value


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, bytes_per_element: int = 2) -> int:
    """2 x layers x kv_heads x head_dim x tokens x bytes (use KV heads for GQA models)."""
    return L.lib().nq_kv_cache_bytes(layers, kv_heads, head_dim, tokens, bytes_per_element)


def version() -> str:
    return L.lib().nq_version_string().decode()
