"""Hugging Face transformers integration: a compressed KV cache for ``generate`` and
cached forward calls. Tested with transformers >=5.24,<5.26 (``nexusquant[hf]``).

    from nexusquant.hf import nexusquant_evict

    with nexusquant_evict(model, quality="balanced") as nq:
        out = model.generate(input_ids, max_new_tokens=200)
    print(nq.last_report)        # the cache's memory_report() when generate returned

The package's parts: `config` (shape, RoPE and layer types read off a model config),
`cache` (NexusQuantCache) and `layer` (one compressed layer), `scores` (eviction scores
from the prefill's queries, and the attention tap that collects them), `attention`
(decode steps attended over the blocks and merged with the window), `report`
(memory_report), `attach` (nexusquant_evict: patching a model for the block),
`compat` (what is needed from transformers; AttachError), `devices` (CUDA detection,
host copies of device blocks).

What happens
------------
`NexusQuantCache` is a transformers `Cache`. Each attention layer keeps, per batch
element, library `Sequence`s (real compressed blocks) plus a small full-precision
window of recent tokens:

* The prefill pass of a layer attends over its exact keys and values (compression after
  the prefill cannot change the prefill's own outputs). Right after, the layer's K/V
  (post-RoPE, ``[batch, kv_heads, T, head_dim]``) are compressed per batch element into
  one block (eviction, RoPE removal, Hadamard, E8 quantisation) and the tensors are
  dropped: the memory the cache holds really shrinks.
* Eviction ranks the prefill's tokens by the attention its last 32 queries pay them
  (the library's observation-window score). The queries are taken from the model's
  attention function, which `nexusquant_evict` routes through a tap; a cache used
  outside the manager falls back to the key-norm proxy (and warns: on SmolLM2 it
  costs several times more perplexity). Inside the manager a prefill whose queries
  never reach the tap raises `AttachError`.
* Sliding-window (and chunked) layers keep transformers' own layer, uncompressed;
  `memory_report` counts them as transformers holds them.
* Tokens processed after the prefill (generated tokens, or the prompt of a second turn
  on a reused cache) stay at full precision in the window. When the window holds
  ``window + chunk`` tokens, the oldest ones (a multiple of ``chunk``) are appended to
  the sequence as a new block: quantised only, never evicted, nothing stored is
  compressed again.
* Positions are the original ones. After eviction the attention sees fewer keys than
  tokens were seen; `get_seq_length` still counts every token seen (so new tokens get
  RoPE positions that continue from the original length) while `get_mask_sizes`
  describes the keys the attention really gets. The library re-applies RoPE to the
  kept keys at their original positions when it decodes them.
* Decode steps never decode the compressed tokens (`attention="attend"`, the
  default): inside `nexusquant_evict`, a forward of at most 64 new tokens makes
  `update` return only the full-precision window and the new tokens, and the attention
  tap (`attention.attend_layer`) computes the layer's attention as two parts merged by
  their log-sum-exps: the library's `Context.attend` over the element's blocks as they
  are (queries with RoPE as the model applied it; the library re-applies RoPE to the
  kept keys at their original positions, with the model's softmax scale and soft-cap,
  GQA by head groups), and torch attention over the window and new tokens with the
  model's mask. Sliding layers (transformers' own) go to the model's own attention.
* The decoding path remains where the tap cannot compute the attention: steps of more
  than 64 tokens (a second turn's prompt), forwards with autograd on, a cache used
  outside the manager, and `attention="decode"`. There `update` decodes each layer's
  compressed tokens into a transient tensor of the model's dtype and concatenates the
  window and the new tokens: a full decode per layer per step. `decode_calls` and
  `attend_calls` count the layer forwards of each kind.

Devices: CPU tensors are passed to the library by pointer. CUDA tensors are passed by
device pointer when the loaded library has a CUDA backend: the eviction scores are
computed by torch on the GPU and handed over as device memory, the blocks live in GPU
memory, and compress, decode and attend run on torch's current stream. Without a CUDA
backend each compress copies the K/V to host memory, each decode writes to host memory
and copies the result to the device, and each decode step's queries are copied to host
memory, attended over the host blocks by the CPU backend, and the outputs copied back. `NexusQuantCache.transfer` says which (``"host"``, ``"device"`` or
``"host-staging"``) and `memory_report()` repeats it.

Batches: every batch element is compressed into its own sequence, so each element
gets what it would get alone. Left padding: inside `nexusquant_evict`, the forward
wrapper reads the padding off the prefill's 2D attention mask; each element stores
only its real tokens, at the positions generate gives them (0 at its first real
token), and evicts from those. Elements then hold different numbers of compressed
tokens: `update` right-aligns them (zeros before the shorter ones) and the wrapper
replaces the model's 2D attention mask by `NexusQuantCache.attention_mask_for`, which
hides those slots; on a model with sliding layers (transformers' own, which keep the
padded token axis) it passes the model's {layer type: mask} mapping instead, with the
caller's mask for the sliding layers. Right padding is refused. A cache used outside the manager cannot
see the mask: there the padding tokens are stored as tokens, which is exact only
without eviction (the model's own mask still lines up with them).

Measuring
---------
`NexusQuantCache.memory_report()` counts the cache and nothing else. Two common
measurements do not measure the compression:

* ``torch.cuda.memory_allocated()`` after ``model(ids, use_cache=True)`` minus before
  counts everything that forward left alive besides the cache, above all the returned
  logits (``[batch, T, vocab]`` in the model's dtype: 1k tokens of a 32k vocabulary are
  62.5 MiB in bf16, half of Mistral-7B's whole fp16 KV cache at that length), and it
  misses what the library allocates outside torch (host blocks; device blocks come
  from cudaMalloc, not from torch's allocator). The "ratio" it gives mostly compares
  two logits tensors.
* ``model(ids, labels=ids).loss`` scores the prefill pass, which attends over exact
  keys and values; the compressed cache is only read by tokens processed after the
  prefill, so this loss is identical with and without compression. Measure the loss of
  a continuation fed after the compressed prefix instead.
"""
from __future__ import annotations

from .attach import nexusquant_evict
from .cache import NexusQuantCache
from .compat import TESTED_RANGE, AttachError
from .config import model_shape, rope_spec_from_config
from .devices import library_has_cuda
from .layer import NexusQuantLayer

__all__ = ["NexusQuantCache", "NexusQuantLayer", "nexusquant_evict", "rope_spec_from_config", "library_has_cuda",
           "model_shape", "AttachError", "TESTED_RANGE"]
