"""The KV cache exchanged between the numpy model and compression schemes.

Layout: ``keys[l][h]`` is a float32 ``[n, head_dim]`` array for layer ``l``
and KV head ``h`` (keys post-RoPE, as a HF model caches them), ``values``
likewise, and ``positions[l][h]`` the int64 original positions of those
``n`` tokens. After a dense prefill ``keys[l]`` is one ``[kv_heads, T, d]``
array; after per-head eviction it may be a list of arrays of different
lengths. Both index the same way, so code reading the cache does not care.

``next_pos`` is the position the next fed token takes. Eviction does not
change it: new tokens continue after the original context, as in a real
serving system where the model never learns that tokens were dropped.
"""

from dataclasses import dataclass
from typing import List, Sequence, Union

import numpy as np

PerLayer = Union[np.ndarray, List[np.ndarray]]


@dataclass
class KVCache:
    keys: List[PerLayer]
    values: List[PerLayer]
    positions: List[PerLayer]
    next_pos: int

    @classmethod
    def dense(cls, keys: Sequence[np.ndarray], values: Sequence[np.ndarray],
              positions=None, next_pos=None) -> "KVCache":
        """From per-layer ``[kv_heads, T, d]`` arrays; positions default 0..T-1."""
        T = keys[0].shape[1]
        if positions is None:
            pos = np.broadcast_to(np.arange(T, dtype=np.int64), keys[0].shape[:2])
            positions = [pos for _ in keys]
        return cls(list(keys), list(values), list(positions),
                   T if next_pos is None else int(next_pos))

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    @property
    def n_kv_heads(self) -> int:
        return len(self.keys[0])

    def head(self, layer: int, h: int):
        return self.keys[layer][h], self.values[layer][h], self.positions[layer][h]

    def is_dense(self) -> bool:
        return all(isinstance(k, np.ndarray) and k.ndim == 3 for k in self.keys)

    def n_tokens(self) -> int:
        """Total cached (token, head, layer) entries, i.e. #vectors per K or V."""
        return int(sum(len(k) for layer in self.keys for k in layer))

    def n_elements(self) -> int:
        """Scalar count over keys and values together."""
        return int(sum(k.size for layer in self.keys for k in layer)) * 2

    def fp16_bytes(self) -> int:
        return 2 * self.n_elements()

    def copy(self) -> "KVCache":
        def cp(layer):
            return layer.copy() if isinstance(layer, np.ndarray) else [a.copy() for a in layer]
        return KVCache([cp(k) for k in self.keys], [cp(v) for v in self.values],
                       [cp(p) for p in self.positions], self.next_pos)

    def map_dense(self, fn_k, fn_v) -> "KVCache":
        """New cache with ``fn_k(layer_keys)``/``fn_v(layer_values)`` applied to
        each layer's dense ``[kv_heads, T, d]`` array (requires a dense cache)."""
        if not self.is_dense():
            raise ValueError("map_dense needs a dense cache")
        return KVCache([fn_k(k) for k in self.keys], [fn_v(v) for v in self.values],
                       list(self.positions), self.next_pos)
