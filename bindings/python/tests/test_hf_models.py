"""The transformers integration on the model families users run (tiny random-weight
Llama, Qwen2 with sliding-window layers, Gemma-3 with sliding-window layers; no
downloads), on the installed transformers release: cached forward and generate use the
compressed cache, the query tap is fed, nothing triggers a deprecation warning,
gradients work, and a model the integration cannot attach to fails loudly."""
import logging
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import DynamicCache  # noqa: E402

from nexusquant.hf import AttachError, NexusQuantCache, nexusquant_evict  # noqa: E402

VOCAB = 256


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=32, intermediate_size=128, vocab_size=VOCAB,
                                        max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
                                        eos_token_id=2))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    # layers 2 and 3 slide over 64 tokens (max_window_layers=2)
    return Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=4, hidden_size=64, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=128, vocab_size=VOCAB,
                                        use_sliding_window=True, sliding_window=64, max_window_layers=2,
                                        max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
                                        eos_token_id=2))


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    # Gemma-3's pattern in small: sliding layers (window 64) around one full-attention layer
    return Gemma3ForCausalLM(Gemma3TextConfig(
        num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        intermediate_size=128, vocab_size=VOCAB, sliding_window=64,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2))


BUILDERS = {"llama": _llama, "qwen2": _qwen2, "gemma3": _gemma3}
SLIDING = {"llama": [], "qwen2": [2, 3], "gemma3": [0, 1, 3]}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request):
    torch.manual_seed(4321)
    m = BUILDERS[request.param]().eval()
    m.generation_config.pad_token_id = 0
    return request.param, m


def prompt(batch=1, length=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


@pytest.fixture
def strict(caplog):
    """Fails on any deprecation warning (Python warnings or transformers' logger)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="(?!nexusquant|transformers)")
        with caplog.at_level(logging.WARNING):
            yield
    assert not [r for r in caplog.records if "deprecat" in r.getMessage().lower()]


def spy_queries(monkeypatch):
    """Counts the query states the attention tap hands to caches, per layer."""
    seen = []
    orig = NexusQuantCache._observe_queries

    def observe(self, layer, query):
        seen.append(layer)
        return orig(self, layer, query)
    monkeypatch.setattr(NexusQuantCache, "_observe_queries", observe)
    return seen


def dynamic_bytes(cache) -> int:
    """Bytes of transformers' own DynamicCache tensors."""
    return sum(t.numel() * t.element_size() for l in cache.layers for t in (l.keys, l.values))


# ---------------------------------------------------------------------------- forward


def test_forward_uses_the_compressed_cache(family, strict, monkeypatch):
    name, model = family
    seen = spy_queries(monkeypatch)
    ids = prompt(length=80)
    with nexusquant_evict(model, quality="balanced") as nq:
        with torch.no_grad():
            out = model(ids, use_cache=True)
            cache = out.cache
            assert isinstance(cache, NexusQuantCache)
            assert nq.last_report["tokens_seen"] == 80  # filled by a plain forward, not only generate
            assert nq.last_report["tokens_attended"] < 80  # balanced evicts
            step = model(out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
    assert step.cache is cache and cache.get_seq_length() == 81
    assert nq.last_report["tokens_seen"] == 81
    assert cache.uncompressed_layers == SLIDING[name]
    full = [i for i in range(len(cache.layers)) if i not in SLIDING[name]]
    assert set(full) <= set(seen)  # the prefill's queries reached every compressed layer
    # the decode step is close to the exact one (same prefill, compressed cache)
    with torch.no_grad():
        ref = model(ids, use_cache=True)
        ref_step = model(ref.logits[:, -1:].argmax(-1), cache=ref.cache, use_cache=True)
    assert isinstance(ref.cache, DynamicCache) and not isinstance(ref.cache, NexusQuantCache)
    err = ((ref_step.logits - step.logits).norm() / ref_step.logits.norm()).item()
    assert 0 < err < 0.5


def test_forward_with_gradients(family):
    name, model = family
    ids = prompt(length=60, seed=1)
    model.zero_grad()
    with nexusquant_evict(model, quality="balanced") as nq:
        with torch.enable_grad():
            out = model(ids, use_cache=True)
            assert isinstance(out.cache, NexusQuantCache)
            step = model(torch.tensor([[7]]), cache=out.cache, use_cache=True)
            (out.logits.sum() + step.logits.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert nq.last_report["tokens_seen"] == 61
    model.zero_grad()


# ---------------------------------------------------------------------------- generate


def test_generate_feeds_the_query_tap(family, strict, monkeypatch):
    name, model = family
    seen = spy_queries(monkeypatch)
    ids = prompt(length=70, seed=2)
    with nexusquant_evict(model, quality="balanced") as nq:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             return_dict_in_generate=True)
    assert isinstance(out.cache, NexusQuantCache)
    assert len(seen) >= len(out.cache.compressed_layers)
    rep = nq.last_report
    assert rep["tokens_seen"] == 75 and rep["layers_uncompressed"] == len(SLIDING[name])


def test_beam_search_and_second_turn(family, strict):
    name, model = family
    ids = prompt(length=50, seed=3)
    with nexusquant_evict(model, quality="balanced", window=4, chunk=8):
        beams = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, num_beams=3,
                               do_sample=False, return_dict_in_generate=True)
        assert beams.sequences.shape == (1, 55)
        first = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                               return_dict_in_generate=True)
        cache = first.cache
        turn2 = torch.cat([first.sequences, prompt(length=20, seed=4)], 1)
        second = model.generate(turn2, attention_mask=torch.ones_like(turn2), cache=cache, max_new_tokens=4,
                                do_sample=False, return_dict_in_generate=True)
    assert second.cache is cache and second.sequences.shape[1] == turn2.shape[1] + 4
    assert cache.get_seq_length() == turn2.shape[1] + 3


def test_left_padding(family):
    name, model = family
    ids = prompt(batch=2, length=120, seed=5)
    mask = torch.ones_like(ids)
    # element 1: 50 real tokens, enough to evict some, and 13 of its padding tokens are
    # still inside the sliding layers' window (63 tokens)
    ids[1, :70], mask[1, :70] = 0, 0
    kw = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_scores=True)
    with nexusquant_evict(model, quality="balanced", window=4, chunk=4):
        both = model.generate(ids, attention_mask=mask, **kw)
        alone = model.generate(ids[1:, 70:], attention_mask=mask[1:, 70:], **kw)
    # the padded element generates what it generates alone, step by step (the compressed
    # layers hold only its real tokens; the sliding layers mask its padding)
    assert both.cache.ragged
    assert torch.equal(both.sequences[1, 70:], alone.sequences[0])
    assert alone.cache.compressed_layers[0].stored < 50 and len(set(both.cache.compressed_layers[0].counts)) == 2
    for s_both, s_one in zip(both.scores, alone.scores):
        torch.testing.assert_close(s_both[1], s_one[0], rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------- memory


def test_memory_report_against_dynamic_cache(family):
    name, model = family
    ids = prompt(batch=2, length=64, seed=6)
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    ref = model.generate(ids, **kw)
    with nexusquant_evict(model, quality="balanced") as nq:
        got = model.generate(ids, **kw)
    rep = nq.last_report
    # transformers' own cache (built from the config, as generate builds it) after the same tokens
    assert isinstance(ref.cache, DynamicCache)
    assert rep["dynamic_cache_bytes"] == dynamic_bytes(ref.cache)
    assert rep["fp16_equivalent_bytes"] * 2 == rep["dynamic_cache_bytes"]  # fp32 model
    sliding = [ref.cache.layers[i] for i in SLIDING[name]]
    assert rep["uncompressed_bytes"] == sum(t.numel() * 4 for l in sliding for t in (l.keys, l.values))
    for l in sliding:
        assert l.keys.shape[-2] == 63  # transformers keeps window - 1 tokens, not all 68
    assert rep["total_bytes"] == rep["compressed_bytes"] + rep["window_bytes"] + rep["uncompressed_bytes"]
    assert rep["ratio_vs_dynamic"] == pytest.approx(rep["dynamic_cache_bytes"] / rep["total_bytes"])
    assert rep["ratio"] == pytest.approx(rep["fp16_equivalent_bytes"] / rep["total_bytes"])
    assert rep["total_bytes"] < rep["dynamic_cache_bytes"]
    assert rep["layers_compressed"] + rep["layers_uncompressed"] == len(ref.cache.layers)
    assert got.sequences.shape == ref.sequences.shape


def test_half_precision_report(family):
    name, model = family
    m = BUILDERS[name]().eval().to(torch.bfloat16)
    ids = prompt(length=48, seed=7)
    ref = m(ids, use_cache=True).cache
    with nexusquant_evict(m, quality="lossless"):
        cache = m(ids, use_cache=True).cache
    rep = cache.memory_report()
    assert rep["dynamic_cache_bytes"] == dynamic_bytes(ref) == rep["fp16_equivalent_bytes"]


# ---------------------------------------------------------------------------- loud failures


def test_unknown_forward_signature_raises(family):
    name, model = family
    orig = model.forward

    def forward(input_ids=None, attention_mask=None, kv_state=None, **kwargs):  # no cache keyword
        return orig(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    model.forward = forward
    try:
        with pytest.raises(AttachError, match=f"transformers {transformers.__version__}.*neither `cache`"):
            with nexusquant_evict(model, quality="balanced"):
                pass
        assert model.__dict__["forward"] is forward  # nothing was patched
    finally:
        del model.forward


def test_unknown_cache_api_raises(family, monkeypatch):
    name, model = family
    from transformers.cache_utils import Cache

    def init(self, layer_list=None):  # a Cache that no longer takes `layers`
        pass
    monkeypatch.setattr(Cache, "__init__", init)
    with pytest.raises(AttachError, match=f"transformers {transformers.__version__}.*Cache"):
        nexusquant_evict(model, quality="balanced")


def test_untapped_attention_raises(family, monkeypatch):
    name, model = family
    ids = prompt(length=40, seed=8)
    # an attention that bypasses ALL_ATTENTION_FUNCTIONS: the queries never reach the tap
    monkeypatch.setattr(NexusQuantCache, "_observe_queries", lambda self, layer, query: None)
    with nexusquant_evict(model, quality="balanced"):
        with pytest.raises(AttachError, match="never reached"):
            with torch.no_grad():
                model(ids, use_cache=True)
    with nexusquant_evict(model, quality="lossless"):  # nothing evicted: no queries needed
        with torch.no_grad():
            assert isinstance(model(ids, use_cache=True).cache, NexusQuantCache)


def test_unknown_attention_implementation_raises(family, monkeypatch):
    name, model = family
    monkeypatch.setattr(model.config, "_attn_implementation", "my_kernel", raising=False)
    with pytest.raises(AttachError, match="my_kernel"):
        with nexusquant_evict(model, quality="balanced"):
            pass
    assert "forward" not in model.__dict__


def test_every_layer_sliding_is_refused():
    from transformers import MistralConfig
    c = MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=VOCAB, sliding_window=16)
    with pytest.raises(NotImplementedError, match="compress nothing"):
        NexusQuantCache(c)
