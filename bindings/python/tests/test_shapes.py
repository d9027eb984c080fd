"""The binding refuses arrays whose shape disagrees with the context before the
library sees them: the library reads [kv_heads, tokens, head_dim] with the context's
head count and head_dim, so a wrong shape would be read with the wrong meaning or
past the end of the array."""
import numpy as np
import pytest

from nexusquant.core import Context, RopeSpec


def ctx3x64():
    return Context(64, 3, 9, preset="lossless", rope=RopeSpec(mode="none"))


def arr(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape, words", [
    ((3, 10, 128), ["head_dim", "128", "head_dim=64"]),          # wrong head_dim
    ((10, 3, 64), ["kv_heads", "10", "num_kv_heads=3", "transpose"]),  # [tokens, heads, dim]
    ((2, 10, 64), ["kv_heads", "2", "num_kv_heads=3"]),           # too few heads: would read past the end
    ((4, 10, 64), ["kv_heads", "4", "num_kv_heads=3"]),
    ((3, 10), ["3-D"]),
    ((3, 10, 64, 1), ["3-D"]),
])
def test_compress_refuses_shapes_that_disagree_with_the_context(shape, words):
    ctx = ctx3x64()
    k = arr(shape)
    for call in (lambda: ctx.compress(k, k.copy()), lambda: ctx.compress_bound(k, k.copy()),
                 lambda: ctx.sequence().append(k, k.copy())):
        with pytest.raises(ValueError) as e:
            call()
        for w in words:
            assert w in str(e.value), (w, str(e.value))


def test_compress_refuses_k_and_v_of_different_shapes():
    ctx = ctx3x64()
    with pytest.raises(ValueError, match=r"k and v shapes differ.*\(3, 10, 64\).*\(3, 11, 64\)"):
        ctx.compress(arr((3, 10, 64)), arr((3, 11, 64)))
    with pytest.raises(ValueError, match="k and v shapes differ"):
        ctx.compress(arr((3, 10, 64)), arr((3, 10, 32)))


def test_transposed_view_of_the_right_shape_is_accepted():
    # The right shape through strides (not a copy) must still work.
    ctx = ctx3x64()
    k, v = arr((10, 3, 64), 1).transpose(1, 0, 2), arr((10, 3, 64), 2).transpose(1, 0, 2)
    blk = ctx.compress(k, v)
    assert blk.tokens_kept == 10
    k2, _ = ctx.decode(blk)
    assert k2.shape == (3, 10, 64)


def test_scores_and_queries_shapes_are_checked():
    ctx = Context(64, 3, 9, preset="balanced", rope=RopeSpec(mode="none"))
    k, v = arr((3, 100, 64), 3), arr((3, 100, 64), 4)
    with pytest.raises(ValueError, match=r"scores shape \(3, 99\).*\(3, 100\)"):
        ctx.compress(k, v, scores=np.ones((3, 99), np.float32))
    with pytest.raises(ValueError, match="scores shape"):
        ctx.compress(k, v, scores=np.ones(300, np.float32))
    with pytest.raises(ValueError, match=r"queries shape \(3, 8, 64\).*q_heads=9"):
        ctx.compress(k, v, queries=arr((3, 8, 64)))
    with pytest.raises(ValueError, match=r"queries shape \(9, 8, 32\).*head_dim=64"):
        ctx.compress(k, v, queries=arr((9, 8, 32)))
    with pytest.raises(ValueError, match=r"query_positions shape \(7,\)"):
        ctx.compress(k, v, queries=arr((9, 8, 64)), query_positions=np.arange(92, 99))
    # and the right shapes pass
    assert ctx.compress(k, v, scores=np.ones((3, 100), np.float32)).tokens_kept < 100
    assert ctx.compress(k, v, queries=arr((9, 8, 64)), query_positions=np.arange(92, 100)).tokens_kept < 100
