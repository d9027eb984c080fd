"""Where K/V live and how they reach the library: CUDA detection, pointer-safe views,
host copies of device blocks."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _lib as L
from ..core import Block, Context, NexusQuantError

_NQ_ERR_BACKEND_UNAVAILABLE = 8
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

