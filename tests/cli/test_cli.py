#!/usr/bin/env python3
"""Tests of the nq command-line tool (standard library only).

usage: test_cli.py NQ_BINARY [TEST ...]   (no TEST: run them all)
"""
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile

NQ = None
TMP = None


def fail(msg):
    raise AssertionError(msg)


def run(args, rc=0):
    p = subprocess.run([NQ] + [str(a) for a in args], capture_output=True, text=True)
    if rc == 0 and p.returncode != 0:
        fail("nq %s exited %d\nstdout: %s\nstderr: %s" % (" ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
    if rc != 0 and p.returncode == 0:
        fail("nq %s succeeded, expected a failure\nstdout: %s" % (" ".join(map(str, args)), p.stdout))
    return p


def run_json(args, rc=0):
    """Runs with --json and checks that stdout is exactly one JSON object."""
    p = run(list(args) + ["--json"], rc)
    try:
        obj = json.loads(p.stdout)
    except ValueError as e:
        fail("nq %s --json: stdout is not one JSON value (%s):\n%r" % (" ".join(map(str, args)), e, p.stdout))
    if not isinstance(obj, dict):
        fail("nq %s --json: stdout is %s, not an object" % (" ".join(map(str, args)), type(obj).__name__))
    return obj, p


def path(name):
    return os.path.join(TMP, name)


# ---------------------------------------------------------------- .npy helpers

def write_npy(fname, descr, shape, payload, version=(1, 0), fortran=False):
    shape_s = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", shape_s)
    pre = 10 if version[0] == 1 else 12
    total = pre + len(header) + 1
    header += " " * ((total + 63) // 64 * 64 - total) + "\n"
    with open(fname, "wb") as f:
        f.write(b"\x93NUMPY" + bytes(version))
        f.write(struct.pack("<H" if version[0] == 1 else "<I", len(header)))
        f.write(header.encode("latin1"))
        f.write(payload)


def read_npy(fname):
    with open(fname, "rb") as f:
        b = f.read()
    if b[:6] != b"\x93NUMPY":
        fail(fname + ": bad magic")
    if b[6] == 1:
        hl, = struct.unpack("<H", b[8:10])
        off = 10
    else:
        hl, = struct.unpack("<I", b[8:12])
        off = 12
    header = b[off:off + hl].decode("latin1")
    d = eval(header, {"__builtins__": {}}, {"True": True, "False": False})  # a Python literal by definition
    if d["fortran_order"]:
        fail(fname + ": fortran order")
    return d["descr"], tuple(d["shape"]), b[off + hl:]


def unpack(descr, payload):
    fmt = {"<f2": "e", "<f4": "f", "<i8": "q"}[descr]
    n = len(payload) // struct.calcsize(fmt)
    return list(struct.unpack("<%d%s" % (n, fmt), payload))


def gaussian(n, seed):
    r = random.Random(seed)
    return [r.gauss(0.0, 1.0) for _ in range(n)]


def f16_roundtrip(vals):
    return list(struct.unpack("<%de" % len(vals), struct.pack("<%de" % len(vals), *vals)))


def snr_db(ref, dec):
    s = sum(x * x for x in ref)
    n = sum((x - y) ** 2 for x, y in zip(ref, dec))
    return float("inf") if n == 0 else 10.0 * math.log10(s / n)


# ---------------------------------------------------------------- tests

def test_size():
    p = run(["size", "--layers", 32, "--kv-heads", 8, "--head-dim", 128, "--tokens", 128000])
    if "16.78 GB" not in p.stdout:
        fail("Llama-3-8B at 128k: expected 16.78 GB in:\n" + p.stdout)
    p = run(["size", "--layers", 80, "--kv-heads", 8, "--head-dim", 128, "--tokens", 128000])
    if "41.94 GB" not in p.stdout:
        fail("Llama-3-70B at 128k: expected 41.94 GB in:\n" + p.stdout)
    j, _ = run_json(["size", "--layers", 32, "--kv-heads", 8, "--head-dim", 128, "--tokens", 128000])
    if j["bytes"] != 16777216000 or round(j["gb"], 2) != 16.78:
        fail("size --json: %r" % j)
    if abs(j["gib"] - 16777216000 / 2**30) > 1e-6:
        fail("size --json gib: %r" % j)
    # A Hugging Face config without head_dim: derived from hidden_size / num_attention_heads.
    cfg = path("config.json")
    with open(cfg, "w") as f:
        json.dump({"model_type": "llama", "num_hidden_layers": 80, "num_attention_heads": 64,
                   "num_key_value_heads": 8, "hidden_size": 8192}, f)
    j, _ = run_json(["size", "--config", cfg, "--tokens", 128000, "--preset", "balanced"])
    if round(j["gb"], 2) != 41.94 or j["head_dim"] != 128 or j["kv_heads"] != 8 or j["layers"] != 80:
        fail("size --config: %r" % j)
    if not (j["compressed_bytes"] > 0 and abs(j["ratio"] - j["bytes"] / j["compressed_bytes"]) < 1e-6 * j["ratio"]):
        fail("size --preset: ratio inconsistent: %r" % j)
    if not 10 < j["ratio"] < 30 or j["preset"] != "balanced":
        fail("size --preset balanced: implausible ratio %r" % j)
    # Multimodal layout (text_config) and the num_attention_heads fallback for KV heads.
    with open(cfg, "w") as f:
        json.dump({"text_config": {"num_hidden_layers": 32, "num_attention_heads": 32, "head_dim": 128}}, f)
    j, _ = run_json(["size", "--config", cfg, "--tokens", 1000])
    if j["kv_heads"] != 32 or j["bytes"] != 2 * 32 * 32 * 128 * 1000 * 2:
        fail("size --config text_config: %r" % j)
    run(["size", "--layers", 32, "--tokens", 10], rc=1)


def make_small_npy(tokens=300, heads=2, layers=2, dim=32, seed=7):
    n = layers * heads * tokens * dim
    k = f16_roundtrip(gaussian(n, seed))
    v = f16_roundtrip(gaussian(n, seed + 1))
    shape = (layers, heads, tokens, dim)
    write_npy(path("k.npy"), "<f2", shape, struct.pack("<%de" % n, *k))
    # V in format version 2.0, to read both header layouts
    write_npy(path("v.npy"), "<f2", shape, struct.pack("<%de" % n, *v), version=(2, 0))
    return shape, k, v


def test_json():
    make_small_npy()
    cases = [
        ["size", "--layers", 2, "--kv-heads", 2, "--head-dim", 64, "--tokens", 10],
        ["synth", "--synthetic", "gaussian", "--tokens", 64, "--kv-heads", 2, "--head-dim", 32,
         "--k", path("sk.npy"), "--v", path("sv.npy")],
        ["compress", "--k", path("k.npy"), "--v", path("v.npy"), "-o", path("j.nqc")],
        ["inspect", path("j.nqc")],
        ["decompress", path("j.nqc"), "--k", path("jk.npy"), "--v", path("jv.npy")],
        ["roundtrip", "--synthetic", "outlier", "--tokens", 256, "--kv-heads", 2, "--head-dim", 64],
        ["bench", "--synthetic", "gaussian", "--tokens", 64, "--kv-heads", 2, "--head-dim", 32,
         "--repeat", 1, "--min-seconds", 0],
    ]
    for c in cases:
        run_json(c)
    j, _ = run_json(["bench", "--synthetic", "gaussian", "--tokens", 64, "--kv-heads", 2, "--head-dim", 32,
                     "--repeat", 1, "--min-seconds", 0])
    for key in ("compress_gbps", "decode_gbps", "memcpy_gbps", "backend", "isa", "threads", "stages"):
        if key not in j:
            fail("bench --json lacks %s: %r" % (key, j))
    if not all(j[k] > 0 for k in ("compress_gbps", "decode_gbps", "memcpy_gbps")) or len(j["stages"]) < 4:
        fail("bench --json: %r" % j)
    # Failures under --json: still exactly one object, with the error; non-zero exit.
    for bad in (["compress", "--k", path("missing.npy"), "--v", path("v.npy"), "-o", path("x.nqc")],
                ["roundtrip", "--synthetic", "gaussian", "--head-dim", 12, "--tokens", 8],
                ["size", "--tokens", 5, "--bogus"]):
        j, p = run_json(bad, rc=1)
        if "error" not in j or not p.stderr.strip():
            fail("failure without error object / stderr message: %r %r" % (j, p.stderr))
    j, p = run_json(["roundtrip", "--synthetic", "gaussian", "--head-dim", 12, "--tokens", 8], rc=1)
    if j["status"] != "NQ_ERR_UNSUPPORTED" or "head_dim" not in j["error"]:
        fail("the library's status and message should come through: %r" % j)


def test_npy_roundtrip():
    shape, k, v = make_small_npy()
    L, H, T, D = shape
    # No eviction: every token back, positions 0..T-1, fp16 sinks bit-exact.
    out = run_json(["compress", "--k", path("k.npy"), "--v", path("v.npy"), "-o", path("c.nqc")])[0]
    size = os.path.getsize(path("c.nqc"))
    if out["bytes_out"] != size or abs(out["ratio"] - 4 * L * H * T * D / size) > 1e-9 * out["ratio"]:
        fail("compress: ratio must count every byte of the file: %r, file %d bytes" % (out, size))
    run(["decompress", path("c.nqc"), "--k", path("dk.npy"), "--v", path("dv.npy"), "--positions", path("dp.npy"),
         "--dtype", "f32"])
    for name, ref in (("dk.npy", k), ("dv.npy", v)):
        descr, shp, payload = read_npy(path(name))
        if descr != "<f4" or shp != shape:
            fail("%s: %s %r" % (name, descr, shp))
        dec = unpack(descr, payload)
        snr = snr_db(ref, dec)
        if snr < (13.0 if name == "dk.npy" else 8.0):
            fail("%s: SNR %.2f dB too low" % (name, snr))
        if dec[:4 * D] != ref[:4 * D]:
            fail("%s: the fp16 sink tokens must come back exactly" % name)
    descr, shp, payload = read_npy(path("dp.npy"))
    pos = unpack(descr, payload)
    if descr != "<i8" or shp != (L, H, T) or pos != list(range(T)) * (L * H):
        fail("positions without eviction should be 0..T-1: %s %r" % (descr, shp))

    # Eviction: each head keeps its own tokens; every decoded row matches its input row.
    run(["compress", "--k", path("k.npy"), "--v", path("v.npy"), "-o", path("e.nqc"), "--evict", "0.5"])
    run(["decompress", path("e.nqc"), "--k", path("ek.npy"), "--v", path("ev.npy"), "--positions", path("ep.npy"),
         "--dtype", "f32"])
    _, pshape, payload = read_npy(path("ep.npy"))
    pos = unpack("<i8", payload)
    kept = T - T // 2
    if pshape != (L, H, kept):
        fail("evicted positions shape %r, expected %r" % (pshape, (L, H, kept)))
    _, kshape, payload = read_npy(path("ek.npy"))
    dk = unpack("<f4", payload)
    ref_rows, dec_rows = [], []
    for l in range(L):
        for h in range(H):
            row = pos[(l * H + h) * kept:(l * H + h + 1) * kept]
            if any(b <= a for a, b in zip(row, row[1:])) or row[0] < 0 or row[-1] >= T:
                fail("positions of layer %d head %d are not increasing input positions" % (l, h))
            for j, p in enumerate(row):
                src = ((l * H + h) * T + p) * D
                dst = ((l * H + h) * kept + j) * D
                ref_rows += k[src:src + D]
                dec_rows += dk[dst:dst + D]
    if snr_db(ref_rows, dec_rows) < 12.0:
        fail("evicted round trip: decoded rows do not match the input rows at their positions")

    # bf16 stored as raw '<V2' needs --dtype bf16; big-endian / Fortran / f64 are refused clearly.
    n = L * H * T * D
    bf = struct.pack("<%dH" % n, *[struct.unpack("<I", struct.pack("<f", x))[0] >> 16 for x in k])
    write_npy(path("bk.npy"), "<V2", shape, bf)
    write_npy(path("bv.npy"), "|V2", shape, bf)
    p = run(["compress", "--k", path("bk.npy"), "--v", path("bv.npy"), "-o", path("b.nqc")], rc=1)
    if "--dtype bf16" not in p.stderr:
        fail("raw V2 without --dtype bf16 should say so: " + p.stderr)
    run(["compress", "--k", path("bk.npy"), "--v", path("bv.npy"), "-o", path("b.nqc"), "--dtype", "bf16"])
    write_npy(path("ml.npy"), "bfloat16", shape, bf)
    run(["compress", "--k", path("ml.npy"), "--v", path("ml.npy"), "-o", path("b.nqc")])
    for descr, fortran, word in (("<f8", False, "not supported"), (">f2", False, "big-endian"),
                                 ("<f2", True, "Fortran")):
        payload = b"\0" * (n * int(descr[-1]))
        write_npy(path("bad.npy"), descr, shape, payload, fortran=fortran)
        p = run(["compress", "--k", path("bad.npy"), "--v", path("bad.npy"), "-o", path("x.nqc")], rc=1)
        if word not in p.stderr:
            fail("%s%s: expected '%s' in: %s" % (descr, " fortran" if fortran else "", word, p.stderr))
    write_npy(path("short.npy"), "<f2", shape, b"\0" * 10)
    p = run(["compress", "--k", path("short.npy"), "--v", path("short.npy"), "-o", path("x.nqc")], rc=1)
    if "truncated" not in p.stderr:
        fail("short data: " + p.stderr)


def test_tamper():
    make_small_npy()
    c = path("t.nqc")
    run(["compress", "--k", path("k.npy"), "--v", path("v.npy"), "-o", c, "--preset", "high"])
    j, _ = run_json(["inspect", c])
    if not j["ok"] or j["file_bytes"] != os.path.getsize(c) or len(j["block_reports"]) != 2:
        fail("inspect of a good file: %r" % j)
    b0 = j["block_reports"][0]
    if b0["checksum"] != "ok" or b0["tokens_in"] != 300 or b0["tokens_kept"] >= 300 or b0["evict_mode"] != "per-head":
        fail("inspect block 0: %r" % b0)
    br = b0["resident_breakdown"]
    if sum(br.values()) != b0["resident_bytes"]:
        fail("breakdown does not add up to the resident bytes: %r" % b0)
    with open(c, "rb") as f:
        data = bytearray(f.read())
    first_len, = struct.unpack("<Q", data[16:24])
    data[24 + first_len // 2] ^= 0x10  # the middle of block 0's archive
    bad = path("tampered.nqc")
    with open(bad, "wb") as f:
        f.write(data)
    p = run(["inspect", bad], rc=1)
    if "checksum" not in p.stderr or "NQ_ERR_CORRUPT" not in p.stderr:
        fail("inspect of a tampered file should report the checksum failure: " + p.stderr)
    j, _ = run_json(["inspect", bad], rc=1)
    if j["ok"] or j["block_reports"][0]["checksum"] != "mismatch" or j["block_reports"][1]["checksum"] != "ok":
        fail("inspect --json of a tampered file: %r" % j)
    p = run(["decompress", bad, "--k", path("x.npy"), "--v", path("y.npy")], rc=1)
    if "checksum" not in p.stderr:
        fail("decompress of a tampered file: " + p.stderr)
    with open(bad, "wb") as f:
        f.write(data[:len(data) - 5])
    p = run(["inspect", bad], rc=1)
    if "truncated" not in p.stderr:
        fail("inspect of a truncated file: " + p.stderr)


def test_digest():
    args = ["roundtrip", "--synthetic", "outlier", "--layers", 2, "--kv-heads", 4, "--tokens", 512, "--head-dim", 64,
            "--seed", 42, "--preset", "balanced"]
    a, _ = run_json(args)
    b, _ = run_json(args)
    if a["digest"] != b["digest"] or len(a["digest"]) != 16 or len(a["block_digests"]) != 2:
        fail("roundtrip digests differ between identical runs: %s %s" % (a["digest"], b["digest"]))
    c, _ = run_json(args + ["--isa", "scalar"])
    if c["digest"] != a["digest"]:
        fail("the scalar code path must produce the same bytes: %s vs %s (isa %s)" % (c["digest"], a["digest"], a["isa"]))
    d, _ = run_json(args[:-4] + ["--seed", 43, "--preset", "balanced"])
    if d["digest"] == a["digest"]:
        fail("different data, same digest")
    for key in ("ratio", "resident_ratio", "bytes_in", "bytes_out", "k_snr_db", "v_snr_db", "compress_gbps",
                "decode_gbps", "backend", "isa", "preset", "k_bits", "v_bits", "evict"):
        if key not in a:
            fail("roundtrip --json lacks " + key)
    if abs(a["ratio"] - a["bytes_in"] / a["bytes_out"]) > 1e-9 * a["ratio"]:
        fail("roundtrip ratio is not bytes_in / bytes_out: %r" % a)


ACCEPT = ["--synthetic", "gaussian", "--kv-heads", 8, "--head-dim", 128, "--tokens", 16384, "--seed", 1]


def test_accept_snr():
    e8, _ = run_json(["roundtrip"] + ACCEPT + ["--k-bits", 3, "--v-bits", 2, "--evict", 0])
    sc, _ = run_json(["roundtrip"] + ACCEPT + ["--k-bits", 3, "--v-bits", 2, "--evict", 0, "--codec", "scalar"])
    msg = "E8 K %.2f V %.2f dB, scalar K %.2f V %.2f dB" % (e8["k_snr_db"], e8["v_snr_db"], sc["k_snr_db"],
                                                             sc["v_snr_db"])
    print(msg)
    if e8["tokens_kept"] != 16384 or e8["k_bits"] != 3 or e8["v_bits"] != 2:
        fail("not K3/V2 without eviction: %r" % e8)
    if e8["k_snr_db"] < 14.6 or e8["v_snr_db"] < 9.5:
        fail("E8 K3/V2 below K 14.6 / V 9.5 dB: " + msg)
    if e8["k_snr_db"] < sc["k_snr_db"] + 0.3 or e8["v_snr_db"] < sc["v_snr_db"] + 0.3:
        fail("E8 is not 0.3 dB above scalar at equal bits: " + msg)


def test_accept_ratio():
    k, v = path("gk.npy"), path("gv.npy")
    run(["synth", "--k", k, "--v", v] + ACCEPT)
    fp16 = 2 * 2 * 8 * 16384 * 128
    for preset, floor in (("lossless", 5.0), ("balanced", 12.0)):
        out = path(preset + ".nqc")
        j, _ = run_json(["compress", "--k", k, "--v", v, "-o", out, "--preset", preset])
        ratio = fp16 / os.path.getsize(out)
        print("%s: %.2fx over every byte of the file" % (preset, ratio))
        if abs(j["ratio"] - ratio) > 1e-9 * ratio:
            fail("compress reports %.6f, the file gives %.6f" % (j["ratio"], ratio))
        if ratio < floor:
            fail("--preset %s: %.2fx < %.1fx" % (preset, ratio, floor))


def test_bench_attention():
    # one JSON object with the fields the documentation names; errors small (no timing asserted)
    for rope in ("keep", "remove"):
        p = run(["bench", "--attention", "--tokens", 300, "--q-heads", 8, "--kv-heads", 2, "--head-dim", 64,
                 "--rope", rope, "--repeat", 1, "--min-seconds", 0])
        j = json.loads(p.stdout)
        for key in ("tokens", "batch", "q_heads", "kv_heads", "head_dim", "preset", "fused_ms", "unfused_ms",
                    "fp16_ms", "bytes_read", "max_rel_err"):
            if key not in j:
                fail("bench --attention: no %s in %r" % (key, j))
        if j["tokens"] != 300 or j["q_heads"] != 8 or j["kv_heads"] != 2 or j["head_dim"] != 64:
            fail("bench --attention shape: %r" % j)
        if not (0 < j["bytes_read"] < 4 * 2 * 300 * 64) or j["max_rel_err"] > 2e-3:
            fail("bench --attention bytes/error: %r" % j)
    run(["bench", "--attention", "--q-heads", 6, "--kv-heads", 4], rc=1)  # not a multiple


TESTS = {name[5:]: fn for name, fn in globals().items() if name.startswith("test_")}


def main():
    global NQ, TMP
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    NQ = sys.argv[1]
    names = sys.argv[2:] or sorted(TESTS)
    failed = 0
    for n in names:
        with tempfile.TemporaryDirectory(prefix="nq-cli-") as d:
            TMP = d
            try:
                TESTS[n]()
                print("PASS", n)
            except AssertionError as e:
                failed += 1
                print("FAIL", n, "\n", e)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
