"""nexusquant.distributed over gloo with two real processes, and its checks alone."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nexusquant.core import Context

try:
    import torch  # noqa: F401
    import torch.distributed
    HAVE_TORCH = torch.distributed.is_available() and torch.distributed.is_gloo_available()
except ImportError:
    HAVE_TORCH = False

# CI must run these: a missing torch there is a failure, not a skip.
needs_torch = pytest.mark.skipif(not HAVE_TORCH and not os.environ.get("CI"),
                                 reason="torch with gloo is not installed")

from nexusquant.distributed import (TransferCorrupt, block_from_image, host_image, pack, parse_envelope,  # noqa: E402
                                    stored_archive, unpack)
from nexusquant.distributed._xxh3 import xxh3_64  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _blocks(preset="high"):
    ctx = Context(64, 2, preset=preset)
    rng = np.random.default_rng(3)
    out = []
    for layer, n in enumerate((50, 200, 1)):
        k = rng.standard_normal((2, n, 64)).astype(np.float32)
        out.append(ctx.compress(k, -k, layer=layer, start_position=1000))
    return ctx, out


def test_digest_matches_library():
    ctx, blocks = _blocks()
    for b in blocks:
        assert xxh3_64(host_image(b)) == b.digest()
        arc = b.serialize()
        assert xxh3_64(arc[:-8]) == int.from_bytes(arc[-8:], "little")


@pytest.mark.parametrize("preset", ["lossless", "high", "max"])
def test_resident_image_becomes_the_same_block(preset):
    ctx, blocks = _blocks(preset)
    for b in blocks:
        b2 = block_from_image(ctx, host_image(b))
        assert b2.resident_bytes() == b.resident_bytes()
        assert b2.info() == b.info()
        assert np.array_equal(b2.positions(1), b.positions(1))


def test_resident_image_checks():
    ctx, blocks = _blocks()
    img = host_image(blocks[1]).copy()
    with pytest.raises(TransferCorrupt, match="total_bytes"):
        block_from_image(ctx, img[:-16])
    bad = img.copy()
    bad[0] ^= 1
    with pytest.raises(TransferCorrupt, match="magic"):
        stored_archive(bad)
    bad = img.copy()
    bad[12] = 3  # codec 3 does not exist: the library's header check refuses it
    with pytest.raises(Exception, match="NQ_ERR_CORRUPT.*codec"):
        block_from_image(ctx, bad)


def test_pack_unpack_and_every_flipped_byte_refused():
    ctx, blocks = _blocks()
    items = [(host_image(b), b.info()["layer"]) for b in blocks]
    env, body = pack(items, "resident", tag=5)
    e = parse_envelope(env, 1 << 30)
    assert (e.count, e.tag, e.form) == (3, 5, 2)
    got = unpack(e, body)
    assert [bytes(g[0]) for g in got] == [bytes(i[0]) for i in items]
    assert [g[1] for g in got] == [0, 1, 2]
    rng = np.random.default_rng(0)
    for pos in list(rng.integers(0, body.size, 40)) + [0, body.size - 1]:
        bad = body.copy()
        bad[pos] ^= 0x01
        try:
            out = unpack(e, bad)
        except TransferCorrupt:
            continue
        # a flip in zero padding changes no item: the items handed out must be intact
        assert [bytes(g[0]) for g in out] == [bytes(i[0]) for i in items], pos
    for pos in range(env.size):
        bad = env.copy()
        bad[pos] ^= 0x80
        with pytest.raises(TransferCorrupt):
            parse_envelope(bad, 1 << 30)
    with pytest.raises(TransferCorrupt, match="limit"):
        parse_envelope(env, 16)


@needs_torch
def test_two_processes_over_gloo(tmp_path):
    if not HAVE_TORCH:
        pytest.fail("CI is set but torch with gloo is missing: install torch (CPU build)")
    init, out = str(tmp_path / "init"), str(tmp_path / "report.json")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "dist_worker.py"), str(r), init, out], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in (0, 1)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two ranks did not finish in 120 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    r = json.load(open(out))
    for form in ("archive", "resident"):
        assert r[form]["form"] == form and r[form]["tag"] == 11 and r[form]["count"] == 3
        assert all(r[form]["digests_equal"]) and all(r[form]["bytes_equal"]) and all(r[form]["decoded_equal"])
        s = r[form + "_sequence"]
        assert s["totals_equal"] and s["blocks"] == 3 and s["decoded_equal"] and s["positions_equal"]
    assert "item 1 (layer 1)" in r["corrupt_archive"] and "XXH3" in r["corrupt_archive"]
    assert "item 2 (layer 2)" in r["corrupt_resident"] and "nothing decoded" in r["corrupt_resident"]
    assert r["after"] == {"tag": 99, "ok": True}


@needs_torch
def test_handoff_demo_small():
    """The demo end to end (two processes over gloo), at a size CI can afford."""
    if not HAVE_TORCH:
        pytest.fail("CI is set but torch with gloo is missing: install torch (CPU build)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "nexusquant.distributed", "--demo", "--backend", "gloo", "--world-size", "2",
           "--tokens", "160", "--layers", "2", "--repeats", "1", "--preset", "lossless", "--form", "resident",
           "--json"]
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=180)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    r = json.loads(p.stdout)
    assert r["verified"] and r["corrupt_refused"] and "nothing decoded" in r["corrupt_error"]
    assert r["fp16_bytes_per_token"] == 2 * 2 * 8 * 128 * 2
    # 160 tokens: the 36 fp16 sink/window tokens per block still leave > 2x on the wire
    assert r["wire_bytes_per_token"] * 2 < r["fp16_bytes_per_token"]
    assert abs(r["wire_ratio"] - r["fp16_bytes_per_token"] / r["wire_bytes_per_token"]) < 1e-9
    assert r["ttfd_fp16_s"] > 0 and r["ttfd_ours_s"] > 0 and r["decode_path"] in ("decode", "attend")
    assert 0 < r["attention_rel_error"] < 1
