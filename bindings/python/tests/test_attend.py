"""Context.attend: attention over compressed blocks against a float64 numpy reference
computed over what decode returns for the same blocks."""
import numpy as np
import pytest

from nexusquant.core import Context, NexusQuantError, RopeSpec


def reference(ctx, blocks, q, scale=None, softcap=0.0, window=0, q_positions=None):
    """float64 attention over the decoded blocks; q [T, QH, D] -> out [T, QH, D], lse [T, QH]."""
    ks, vs, ps = [], [], []
    for b in blocks:
        k, v = ctx.decode(b)
        ks.append(k.astype(np.float64))
        vs.append(v.astype(np.float64))
        ps.append(np.stack([b.positions(h) for h in range(ctx.num_kv_heads)]))
    k, v, pos = np.concatenate(ks, 1), np.concatenate(vs, 1), np.concatenate(ps, 1)
    T, QH, D = q.shape
    g = QH // ctx.num_kv_heads
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    out = np.zeros((T, QH, D))
    lse = np.full((T, QH), -np.inf)
    for t in range(T):
        for h in range(QH):
            x = k[h // g] @ q[t, h].astype(np.float64) * scale
            if softcap:
                x = softcap * np.tanh(x / softcap)
            vis = np.ones(x.shape, bool)
            if q_positions is not None:
                qp = q_positions[t]
                vis = pos[h // g] <= qp
                if window:
                    vis &= qp - pos[h // g] < window
            if not vis.any():
                continue
            x = x[vis]
            m = x.max()
            p = np.exp(x - m)
            lse[t, h] = m + np.log(p.sum())
            out[t, h] = p @ v[h // g][vis] / p.sum()
    return out, lse


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("rope", ["keep", "remove", "none"])
def test_attend_sequence_matches_reference(rope):
    rng = np.random.default_rng(7)
    ctx = Context(64, 2, 8, preset="lossless", rope=RopeSpec(mode=rope))
    seq = ctx.sequence()
    k = rng.standard_normal((2, 150, 64)).astype(np.float32)
    v = rng.standard_normal((2, 150, 64)).astype(np.float32)
    seq.append(k, v)
    k2 = rng.standard_normal((2, 40, 64)).astype(np.float32)
    seq.append(k2, k2 * 0.5, start_position=150)
    q = rng.standard_normal((8, 64)).astype(np.float32)
    out, lse = ctx.attend(seq, q)
    assert out.shape == (8, 64) and lse.shape == (8,)
    ref_blocks = _blocks_of(ctx, seq)
    ro, rl = reference(ctx, ref_blocks, q[None])
    assert rel(out, ro[0]) < 1e-5
    assert np.abs(lse - rl[0]).max() < 2e-5


def _blocks_of(ctx, seq):
    """The sequence's blocks as Block objects that do not own their handles."""
    from nexusquant import _lib as L
    from nexusquant.core import Block

    return [Block(L.lib().nq_sequence_block(seq._h, i), ctx, owned=False) for i in range(seq.num_blocks)]


def test_attend_tokens_masks_softcap_and_dtypes():
    rng = np.random.default_rng(3)
    ctx = Context(128, 2, 4, preset="lossless")
    k = rng.standard_normal((2, 100, 128)).astype(np.float16)
    v = rng.standard_normal((2, 100, 128)).astype(np.float16)
    b = ctx.compress(k, v, start_position=10)
    for dt, bound in [(np.float32, 1e-5), (np.float16, 2e-3)]:
        q = rng.standard_normal((3, 4, 128)).astype(dt)
        qpos = np.array([60, 80, 109])
        out, lse = ctx.attend([b], q, scale=0.1, softcap=4.0, window=30, q_positions=qpos)
        assert out.dtype == dt and out.shape == q.shape and lse.shape == (3, 4)
        ro, rl = reference(ctx, [b], q, scale=0.1, softcap=4.0, window=30, q_positions=qpos)
        assert rel(out.astype(np.float64), ro) < bound
        assert np.abs(lse - rl).max() < 2e-5
    # a query before every key sees nothing: lse -inf, zeros
    out, lse = ctx.attend(b, rng.standard_normal((4, 128)).astype(np.float32), q_positions=5)
    assert np.all(np.isneginf(lse)) and not out.any()


def test_attend_rejects_bad_input():
    ctx = Context(64, 2, 4)
    b = ctx.compress(np.ones((2, 20, 64), np.float32), np.ones((2, 20, 64), np.float32))
    with pytest.raises(ValueError):
        ctx.attend(b, np.zeros((3, 64), np.float32))  # 3 query heads, the context has 4
    with pytest.raises(ValueError):
        ctx.attend(b, np.zeros((4, 64), np.float32), window=8)  # a window needs positions
    with pytest.raises(NexusQuantError) as e:
        ctx.attend(b, np.zeros((4, 64), np.float32), scale=-1.0)
    assert "scale" in str(e.value)
    other = Context(32, 2, 4)
    with pytest.raises(NexusQuantError) as e:
        other.attend(b, np.zeros((4, 32), np.float32))
    assert "block_images" in str(e.value)


def test_attend_torch_cpu():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    ctx = Context(64, 1, 2)
    k = rng.standard_normal((1, 70, 64)).astype(np.float32)
    b = ctx.compress(k, k)
    q = torch.randn(2, 64, dtype=torch.bfloat16)
    out, lse = ctx.attend(b, q)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    ro, rl = reference(ctx, [b], q.float().numpy()[None])
    assert rel(out.float().numpy().astype(np.float64), ro[0]) < 1.6e-2
    assert np.abs(lse.numpy() - rl[0]).max() < 2e-5
