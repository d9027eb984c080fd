"""End-to-end nq-eval on the real model, tiny sizes."""

import json
import os

import pytest

from nexusquant.eval.cli import format_table, main


def test_nq_eval_tiny(gguf_path, shared_data, capsys, tmp_path):
    text = os.path.join(shared_data, "wikitext-2-raw-test.txt")
    if not os.path.isfile(text):
        text = tmp_path / "t.txt"
        text.write_text(" The tower is 324 metres tall, about the same height as an 81-storey building. " * 40)
    rc = main(["--text", str(text), "--model", str(gguf_path), "--context", "64", "--score", "16",
               "--samples", "1", "--schemes", "fp16,fp8,kivi2-g32-r16,q8_0,q4_0,q4_0h",
               "--needle-context", "128", "--json", "-q"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["scheme"]: r for r in rows}
    assert set(by) == {"fp16", "fp8", "kivi2-g32-r16", "q8_0", "q4_0", "q4_0h"}
    for r in rows:
        for key in ("scheme", "bits_per_element", "ratio", "ppl", "ppl_delta_pct", "kl", "top1", "needle"):
            assert key in r
        assert 0.0 <= r["top1"] <= 1.0 and r["kl"] >= 0.0
    assert by["fp16"]["ratio"] == 1.0 and by["fp16"]["kl"] < 1e-4
    assert by["q8_0"]["bits_per_element"] == 8.5 and by["q4_0"]["bits_per_element"] == 4.5
    assert by["fp8"]["ratio"] == pytest.approx(2.0, rel=1e-2)
    assert by["q8_0"]["kl"] < by["q4_0"]["kl"]
    print(format_table(rows))


def test_unknown_scheme_fails_fast():
    with pytest.raises(KeyError):
        main(["--schemes", "fp16,bogus"])


def test_needle_at_out_of_range_fails_fast(capsys):
    assert main(["--needle-at", "1.5", "--schemes", "fp16"]) == 2
    assert "--needle-at" in capsys.readouterr().err


def test_nq_eval_rows_show_the_chosen_bits(gguf_path, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(" The tower is 324 metres tall, about the same height as an 81-storey building. " * 40)
    rc = main(["--text", str(text), "--model", str(gguf_path), "--context", "96", "--score", "16",
               "--samples", "1", "--schemes", "e8-k3v2,lossless", "--no-profile", "--no-needle", "--json", "-q"])
    assert rc == 0
    by = {r["scheme"]: r for r in json.loads(capsys.readouterr().out)}
    fixed, chosen = by["e8-k3v2"], by["lossless"]
    assert (fixed["k_bits_mean"], fixed["v_bits_mean"]) == (3.0, 2.0)
    layers = chosen["layer_bits_first_sample"].split()
    assert len(layers) == 30 and all(s.startswith("K") and "V" in s for s in layers)
    # each block's pair is within the candidates around the nominal K3/V2
    for s in layers:
        k, v = map(int, s[1:].split("V"))
        assert 2 <= k <= 5 and 1 <= v <= 3 and k + v <= 6
    assert "K/V bits" in format_table(list(by.values()))


def test_unknown_model_and_bad_phase_fail_fast(capsys):
    assert main(["--model", "no-such-model", "--schemes", "fp16"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["--phase", "1.0", "--schemes", "fp16"]) == 2


def test_code_text_is_read_from_the_standard_library(tmp_path):
    from nexusquant.eval.harness import sample_offsets
    from nexusquant.eval.texts import CODE_TEXT, materialise, stdlib_code

    text, used = stdlib_code()
    assert "argparse.py" in used and "\ndef " in text and len(text) > 100_000
    path = materialise(CODE_TEXT, tmp_path)
    assert path.read_text(encoding="utf-8") == text
    # tuning windows (another phase) do not overlap the reported ones when slots are wide
    a, b = sample_offsets(100_000, 2177, 16, 0.5), sample_offsets(100_000, 2177, 16, 0.0)
    assert min(abs(x - y) for x in a for y in b) >= 2177
