"""memory_report: what a NexusQuantCache holds, against what transformers' own cache
would hold for the same tokens."""
from __future__ import annotations

from .layer import NexusQuantLayer


def _tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def memory_report(cache) -> dict:
    """What the cache really holds, in bytes.

    compressed_bytes        every byte of the library blocks (resident form: header,
                            positions, scales, codes, fp16 sinks/window, padding);
                            blocks shared by duplicated beams count once; the handles
                            (a few hundred bytes per sequence) do not count
    window_bytes            the full-precision window of the compressed layers (and,
                            only inside a prefill forward, the K/V awaiting their queries)
    uncompressed_bytes      the layers kept as transformers' own layers (sliding
                            window, chunked), exactly as those layers hold them
    total_bytes             compressed_bytes + window_bytes + uncompressed_bytes
    dynamic_cache_bytes     what transformers' DynamicCache (built from the model's
                            config, as generate builds it) would hold for the same
                            tokens, in the K/V dtype: every token seen of a full layer
                            (left padding included, beams included), what a sliding
                            layer keeps (at most its window - 1 tokens between forwards)
    fp16_equivalent_bytes   the same tokens at 2 bytes per element (= dynamic_cache_bytes
                            for fp16/bf16 models, half of it for fp32 models)
    ratio                   fp16_equivalent_bytes / total_bytes
    ratio_vs_dynamic        dynamic_cache_bytes / total_bytes
    layers_compressed       layers held by the library
    layers_uncompressed     layers kept as transformers' own (sliding, chunked)
    tokens_seen             tokens that went through the model (padding included)
    tokens_attended         keys a compressed layer's attention gets per head (kept + window)
    layer_bits              per compressed layer, the (K bits, V bits) of its first block
                            (batch element 0): presets choose them per block from the data
    transfer                see `NexusQuantCache.transfer`

    This counts the cache and nothing else. Measuring it as the difference of
    torch.cuda.memory_allocated() before and after a forward also counts what that
    forward left alive besides the cache (the logits, [batch, T, vocab], are returned
    with it) and misses memory the library allocates outside torch (see the package
    docstring, "Measuring"). Right after a prefill, a sliding layer's tensors are views
    of the prefill's K/V (transformers slices, it does not copy), so until the next
    forward the storage behind them is the whole prompt's, in both caches alike.
    """
    comp = win = plain = dynamic = fp16 = 0
    tokens = kept = n_comp = n_plain = 0
    layer_bits = []
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False) or layer.keys is None:
            continue
        if isinstance(layer, NexusQuantLayer):
            b, h, _, dk = layer.keys.shape
            dv = layer.values.shape[-1]
            seen = layer.get_seq_length()
            elements = b * h * (dk + dv) * seen  # a DynamicLayer keeps every token seen
            dynamic += elements * layer.keys.element_size()
            fp16 += elements * 2
            blocks = layer.blocks(0)
            if blocks:
                info = blocks[0].info()
                layer_bits.append((info["k_bits"], info["v_bits"]))
            comp += layer.compressed_bytes()
            win += layer.window_bytes()
            tokens = max(tokens, seen)
            kept = max(kept, layer.stored + layer.window_length)
            n_comp += 1
        else:
            held = _tensor_bytes(layer.keys, layer.values)
            plain += held
            dynamic += held  # the same transformers layer a DynamicCache would hold
            fp16 += (layer.keys.numel() + layer.values.numel()) * 2
            n_plain += 1
    total = comp + win + plain
    return {
        "compressed_bytes": comp,
        "window_bytes": win,
        "uncompressed_bytes": plain,
        "total_bytes": total,
        "dynamic_cache_bytes": dynamic,
        "fp16_equivalent_bytes": fp16,
        "ratio": fp16 / total if total else float("nan"),
        "ratio_vs_dynamic": dynamic / total if total else float("nan"),
        "layers_compressed": n_comp,
        "layers_uncompressed": n_plain,
        "tokens_seen": tokens,
        "tokens_attended": kept,
        "layer_bits": layer_bits,
        "quality": cache.quality,
        "transfer": cache.transfer,
    }
