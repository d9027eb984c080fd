"""Model profiles: which models they match, how explicit settings combine with them, and
that nq-eval's preset schemes and the transformers cache really compress with them."""
import numpy as np
import pytest

from nexusquant.core import Context
from nexusquant.eval.library_schemes import library_schemes
from nexusquant.model.kvcache import KVCache
from nexusquant.profiles import PROFILES, find_profile, merge

SMOL = {"num_layers": 30, "num_q_heads": 9, "num_kv_heads": 3, "head_dim": 64}
GGUF_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2 SmolLM2-135M-Instruct.Q4_1.gguf"
HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOL_LOSSLESS = next(p for p in PROFILES if p.name == "smollm2-135m").presets["lossless"]
# the layers the profile gives K4/V3 (the rest keep the preset's K3/V2)
BOOSTED = sorted(i for o in SMOL_LOSSLESS["overrides"] for i in range(*o["layers"]))
WINDOW = SMOL_LOSSLESS["fp16_window"]


def test_match_needs_shape_and_name():
    assert find_profile(SMOL, GGUF_NAME).name == "smollm2-135m"
    assert find_profile(SMOL, HF_NAME).name == "smollm2-135m"
    assert find_profile(SMOL, "some-other-model") is None           # same shape, other model
    assert find_profile(dict(SMOL, num_layers=24), HF_NAME) is None  # name, other shape
    assert find_profile(SMOL, "") is None


def test_merge_rules():
    prof = merge("lossless", SMOL, HF_NAME, "auto", {})
    assert prof == SMOL_LOSSLESS and 5 <= len(BOOSTED) < 30 and WINDOW < 32
    # explicit non-bit settings win over the profile's, the rest of the profile stays
    m = merge("lossless", SMOL, HF_NAME, "auto", {"fp16_window": 16, "fp16_sinks": None})
    assert m["fp16_window"] == 16 and m["overrides"] == prof["overrides"] and "fp16_sinks" not in m
    # explicit bits (or overrides) replace the preset the profile was tuned for: no profile
    assert merge("lossless", SMOL, HF_NAME, "auto", {"k_bits": 4}) == {"k_bits": 4}
    assert "fp16_window" not in merge("lossless", SMOL, HF_NAME, "auto", {"overrides": [{"layers": (0, 1)}]})
    # presets without a profile entry, profile=None and other models: generic
    assert merge("balanced", SMOL, HF_NAME, "auto", {}) == {}
    assert merge("lossless", SMOL, HF_NAME, None, {}) == {}
    assert merge("lossless", SMOL, "llama", "auto", {}) == {}
    # a profile by name ignores the model's name but not its shape
    assert merge("lossless", SMOL, "llama", "smollm2-135m", {}) == prof
    with pytest.raises(ValueError, match="shape"):
        merge("lossless", dict(SMOL, head_dim=128), HF_NAME, "smollm2-135m", {})
    with pytest.raises(ValueError, match="unknown profile"):
        merge("lossless", SMOL, HF_NAME, "nope", {})


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profiles_build_valid_contexts(profile):
    """Every profile entry is accepted by the library for its model's shape."""
    s = profile.shape
    for preset, settings in profile.presets.items():
        ctx = Context(s["head_dim"], s["num_kv_heads"], s["num_q_heads"], preset=preset,
                      num_layers=s["num_layers"], **settings)
        ctx.free()


def test_library_sees_the_profile():
    ctx = Context(64, 3, 9, preset="lossless", num_layers=30, **merge("lossless", SMOL, HF_NAME, "auto", {}))
    for layer in range(30):
        p = ctx.layer_params(layer)
        assert (p["k_bits"], p["v_bits"]) == ((4, 3) if layer in BOOSTED else (3, 2)), layer
        assert p["fp16_window"] == WINDOW
    ctx.free()


def _random_cache(tokens=96, seed=3):
    rng = np.random.default_rng(seed)
    ks = [rng.standard_normal((3, tokens, 64)).astype(np.float32) for _ in range(30)]
    vs = [rng.standard_normal((3, tokens, 64)).astype(np.float32) for _ in range(30)]
    return KVCache.dense(ks, vs)


def test_eval_scheme_applies_profile_only_to_its_model():
    """nq-eval's `lossless` compresses SmolLM2's cache with the profile: the boosted
    layers cost more bytes and come back closer; another model name gets the preset."""
    cache = _random_cache()
    schemes = library_schemes()
    out = {}
    for name, model_name in (("lossless", GGUF_NAME), ("lossless-generic", GGUF_NAME), ("lossless", "other")):
        new, nbytes, _ = schemes[name].apply(cache, q_heads=9, rope_theta=1e5, model_name=model_name)
        err = [float(np.mean((new.keys[i] - cache.keys[i]) ** 2)) for i in range(30)]
        out[(name, model_name)] = (nbytes, err)
    prof, generic, other = out[("lossless", GGUF_NAME)], out[("lossless-generic", GGUF_NAME)], out[("lossless", "other")]
    assert generic == other
    assert prof[0] != generic[0]
    for layer in BOOSTED:
        # the profile's smaller fp16 window also moves tokens into the quantised part, so
        # compare layers against their own generic error: K4 beats K3 by far
        assert prof[1][layer] < 0.6 * generic[1][layer], layer
    plain = min(set(range(30)) - set(BOOSTED))
    assert prof[1][plain] > generic[1][plain]   # an unboosted layer: more quantised tokens, more error


def test_hf_cache_applies_profile():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from nexusquant.hf import NexusQuantCache

    cfg = transformers.LlamaConfig(num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
                                   num_key_value_heads=3, head_dim=64, intermediate_size=64, vocab_size=64)
    cfg._name_or_path = HF_NAME

    def bits(cache, layer):
        p = cache.context.layer_params(layer)
        return p["k_bits"], p["v_bits"], p["fp16_window"]

    plain = min(set(range(30)) - set(BOOSTED))
    assert bits(NexusQuantCache(cfg), 17) == (4, 3, WINDOW)
    assert bits(NexusQuantCache(cfg), plain) == (3, 2, WINDOW)
    assert NexusQuantCache(cfg).profile_settings["fp16_window"] == WINDOW
    assert bits(NexusQuantCache(cfg, profile=None), 17) == (3, 2, 32)
    assert bits(NexusQuantCache(cfg, k_bits=3), 17) == (3, 2, 32)          # explicit bits: generic
    assert bits(NexusQuantCache(cfg, fp16_window=4), 17) == (4, 3, 4)      # explicit window wins
    cfg._name_or_path = "someone/other-model"
    assert bits(NexusQuantCache(cfg), 17) == (3, 2, 32)
    assert NexusQuantCache(cfg).profile_settings == {}
