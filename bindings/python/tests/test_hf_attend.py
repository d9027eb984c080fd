"""Decode steps of a NexusQuantCache that attend over the compressed blocks as they are
(attention="attend", the default inside nexusquant_evict) against the path that
decodes them (attention="decode"): the same logits within a stated bound, no decode of
the compressed tokens, generate end to end, on the model families of test_hf_models
(plus Gemma-2, whose attention has a logit soft-cap) and the merge rule on its own."""
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nexusquant import core  # noqa: E402
from nexusquant.hf import AttachError, NexusQuantCache, nexusquant_evict  # noqa: E402
from nexusquant.hf.attention import merge, tail_attention  # noqa: E402
from test_hf_models import BUILDERS, VOCAB, prompt  # noqa: E402

# Relative error (L2 over the vocabulary) of a decode step's logits through the blocks
# against the same step decoding them: both read the same blocks in float32 and differ
# only in the order of the sums (measured: 2e-7..5e-7 on these models; dropping Gemma-2's
# soft-cap from the block part gives 4e-5, Gemma's scale replaced by 1/sqrt(d) 1e-3).
LOGITS_TOL = 1e-5


def _gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM
    return Gemma2ForCausalLM(Gemma2Config(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        intermediate_size=128, vocab_size=VOCAB, sliding_window=64, attn_logit_softcapping=0.5,
        query_pre_attn_scalar=24, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        attn_implementation="eager"))


FAMILIES = dict(BUILDERS, gemma2=_gemma2)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    torch.manual_seed(2468)
    m = FAMILIES[request.param]().eval()
    m.generation_config.pad_token_id = 0
    return request.param, m


def count_decodes(monkeypatch) -> list:
    """Records every library decode the binding runs (sequence and block decodes)."""
    calls = []
    for cls, name in ((core.Sequence, "decode"), (core.Context, "decode"), (core.Context, "_decode_into")):
        orig = getattr(cls, name)

        def spy(*a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(*a, **k)
        monkeypatch.setattr(cls, name, spy)
    return calls


def steps(model, ids, n, **settings):
    """Logits of the prefill's greedy continuation over n decode steps ([n, vocab])
    and the cache, with `settings` for nexusquant_evict."""
    out = []
    with nexusquant_evict(model, **settings):
        with torch.no_grad():
            r = model(ids, use_cache=True)
            cache = r.cache
            nxt = r.logits[:, -1:].argmax(-1)
            for _ in range(n):
                r = model(nxt, cache=cache, use_cache=True)
                out.append(r.logits[:, -1])
                nxt = r.logits[:, -1:].argmax(-1)
    return torch.cat(out), cache


def rel(a, b):
    """Largest relative L2 error of a row of logits; entries that are -inf in both (the
    tokens min_new_tokens forbids) are left out, an -inf in one only is an error."""
    both = torch.isneginf(a) & torch.isneginf(b)
    a, b = a.masked_fill(both, 0), b.masked_fill(both, 0)
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


@pytest.mark.parametrize("quality", ["lossless", "balanced"])
def test_attend_matches_decode(family, quality, monkeypatch):
    name, model = family
    ids = prompt(length=90, seed=11)
    # window 8 + chunk 8: the 20 steps append blocks to the sequence as they go
    kw = dict(quality=quality, window=8, chunk=8)
    ref, ref_cache = steps(model, ids, 20, attention="decode", **kw)
    calls = count_decodes(monkeypatch)
    got, cache = steps(model, ids, 20, **kw)
    assert ref_cache.decode_calls == 20 * len(ref_cache.compressed_layers) and ref_cache.attend_calls == 0
    assert cache.attend_calls == 20 * len(cache.compressed_layers)
    assert cache.decode_calls == 0 and calls == []  # no step decoded the compressed tokens
    assert cache.compressed_layers[0].num_blocks() >= 2  # a flushed chunk was attended too
    assert rel(got, ref) < LOGITS_TOL


def test_generate_never_decodes_the_cache(family, monkeypatch):
    name, model = family
    ids = prompt(length=100, seed=12)
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=24, min_new_tokens=24, do_sample=False,
              return_dict_in_generate=True, output_scores=True)
    calls = count_decodes(monkeypatch)
    with nexusquant_evict(model, quality="balanced", window=8, chunk=8):
        got = model.generate(ids, **kw)
    assert isinstance(got.cache, NexusQuantCache) and got.cache.attend_calls > 0
    assert calls == [] and got.cache.decode_calls == 0
    # the spy does count: the decoding path goes through it
    with nexusquant_evict(model, quality="balanced", window=8, chunk=8, attention="decode"):
        ref = model.generate(ids, **kw)
    assert len(calls) > 0 and ref.cache.decode_calls > 0
    assert torch.equal(got.sequences, ref.sequences)
    for a, b in zip(got.scores, ref.scores):
        assert rel(a, b) < LOGITS_TOL


def test_left_padded_batch_attends(family):
    name, model = family
    ids = prompt(batch=2, length=110, seed=13)
    mask = torch.ones_like(ids)
    ids[0, :40], mask[0, :40] = 0, 0
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, return_dict_in_generate=True,
              output_scores=True)
    with nexusquant_evict(model, quality="balanced", window=4, chunk=4):
        got = model.generate(ids, **kw)
    with nexusquant_evict(model, quality="balanced", window=4, chunk=4, attention="decode"):
        ref = model.generate(ids, **kw)
    assert got.cache.ragged and got.cache.decode_calls == 0 and got.cache.attend_calls > 0
    assert torch.equal(got.sequences, ref.sequences)
    for a, b in zip(got.scores, ref.scores):
        assert rel(a, b) < LOGITS_TOL


def test_eager_attention_attends():
    from test_hf_models import _llama
    torch.manual_seed(5)
    model = _llama().eval()
    model.config._attn_implementation = "eager"
    ids = prompt(length=70, seed=14)
    ref, _ = steps(model, ids, 6, quality="balanced", attention="decode")
    got, cache = steps(model, ids, 6, quality="balanced")
    assert cache.attend_calls > 0 and cache.decode_calls == 0
    assert rel(got, ref) < LOGITS_TOL


def test_long_steps_and_gradients_decode(family):
    name, model = family
    ids = prompt(length=80, seed=15)
    with nexusquant_evict(model, quality="balanced"):
        with torch.no_grad():
            cache = model(ids, use_cache=True).cache
            model(prompt(length=70, seed=16), cache=cache, use_cache=True)  # > 64 new tokens: decodes
        assert cache.decode_calls == len(cache.compressed_layers) and cache.attend_calls == 0
        out = model(prompt(length=1, seed=17), cache=cache, use_cache=True)  # autograd on: decodes
        out.logits.sum().backward()
        assert cache.decode_calls == 2 * len(cache.compressed_layers) and cache.attend_calls == 0


def test_attention_that_skips_the_tap_raises(monkeypatch):
    from test_hf_models import _llama
    torch.manual_seed(6)
    model = _llama().eval()
    ids = prompt(length=60, seed=18)
    with nexusquant_evict(model, quality="lossless") as nq:
        with torch.no_grad():
            cache = model(ids, use_cache=True).cache
            # the model's attention no longer goes through the tap: it would see the tail only
            monkeypatch.setattr(NexusQuantCache, "_attention", lambda self, *a: None)
            with pytest.raises(AttachError, match="never reached"):
                model(prompt(length=1, seed=19), cache=cache, use_cache=True)


def test_attention_setting_is_checked():
    from test_hf_models import _llama
    with pytest.raises(ValueError, match="attention"):
        NexusQuantCache(_llama(), attention="fused")


# ---------------------------------------------------------------------------- merge rule


@pytest.mark.parametrize("softcap", [0.0, 4.0])
def test_split_attention_merges_to_the_whole(softcap):
    g = torch.Generator().manual_seed(3)
    b, hq, hk, t, n, d = 2, 6, 2, 3, 40, 16
    q = torch.randn(b, hq, t, d, generator=g)
    k = torch.randn(b, hk, n, d, generator=g)
    v = torch.randn(b, hk, n, d, generator=g)
    scale = 0.3
    whole_o, whole_l = tail_attention(q, k, v, None, scale, softcap)
    # reference: float64, causal aligned at the last key, GQA by head groups
    kk = k.double().repeat_interleave(hq // hk, 1)
    x = q.double() @ kk.transpose(-1, -2) * scale
    if softcap:
        x = torch.tanh(x / softcap) * softcap
    x = x.masked_fill(torch.arange(n)[None, :] > torch.arange(n - t, n)[:, None], -math.inf)
    ref_o = (torch.softmax(x, -1) @ v.double().repeat_interleave(hq // hk, 1)).transpose(1, 2)
    torch.testing.assert_close(whole_o.double(), ref_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole_l.double(), torch.logsumexp(x, -1).transpose(1, 2), rtol=1e-5, atol=1e-5)
    # the first 25 keys (all visible to every query) and the rest, merged
    head_o, head_l = tail_attention(q, k[:, :, :25], v[:, :, :25], torch.ones(1, 1, t, 25, dtype=torch.bool),
                                    scale, softcap)
    rest_o, rest_l = tail_attention(q, k[:, :, 25:], v[:, :, 25:], None, scale, softcap)
    o, lse = merge(head_o, head_l, rest_o, rest_l)
    torch.testing.assert_close(o, whole_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, whole_l, rtol=1e-5, atol=1e-5)
    # a part with no visible key contributes nothing
    none_l = torch.full_like(head_l, -math.inf)
    o2, lse2 = merge(torch.zeros_like(head_o), none_l, whole_o, whole_l)
    assert torch.equal(o2, whole_o) and torch.equal(lse2, whole_l)
    # additive float masks (eager) are read like boolean ones (sdpa)
    fmask = torch.zeros(1, 1, t, n).masked_fill(torch.arange(n)[None, :] > torch.arange(n - t, n)[:, None],
                                                torch.finfo(torch.float32).min)
    fo, fl = tail_attention(q, k, v, fmask, scale, softcap)
    torch.testing.assert_close(fo, whole_o, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("transfer", ["auto", "host-staging"])
def test_cuda_attend_matches_decode(transfer):
    """CUDA tensors: the device path when the library has a CUDA backend ("auto"), or
    the queries staged through host memory; either way no decode of the blocks."""
    from test_hf_models import _llama
    torch.manual_seed(7)
    model = _llama().eval().cuda()
    ids = prompt(length=90, seed=20).cuda()
    kw = dict(quality="balanced", window=8, chunk=8, transfer=transfer)
    ref, _ = steps(model, ids, 12, attention="decode", **kw)
    got, cache = steps(model, ids, 12, **kw)
    assert cache.transfer in (("device", "host-staging") if transfer == "auto" else ("host-staging",))
    assert cache.decode_calls == 0 and cache.attend_calls == 12 * len(cache.compressed_layers)
    assert rel(got, ref) < 10 * LOGITS_TOL  # the GPU kernels sum in another order than torch's
