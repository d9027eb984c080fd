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
