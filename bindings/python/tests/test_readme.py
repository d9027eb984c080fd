"""The README's examples run as written, and its presets tables say what the library
does. Each language's example is taken from the README itself and run with the README's
shell steps (against this build tree instead of a fresh build); a language whose
toolchain is missing is skipped."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nexusquant.core import Context, kv_cache_bytes

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()
DESIGN = (ROOT / "docs" / "DESIGN.md").read_text()


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def blocks(text: str, lang: str) -> list:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.S | re.M)


def build_dir() -> Path:
    lib = os.environ.get("NEXUSQUANT_LIBRARY")
    if not lib or not (Path(lib).parent / "pkgconfig-uninstalled" / "nexusquant.pc").is_file():
        pytest.skip("NEXUSQUANT_LIBRARY does not point into a build tree")
    return Path(lib).resolve().parent


def run_steps(script: str, cwd: Path, env: dict) -> str:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{script}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r.stdout


def steps_for(shell: str, build: Path, tmp: Path, put_code: str, before: str) -> str:
    """The README's shell steps, minus the library build (done already), on this build
    tree, in a temporary directory, with the example code put in place before `before`."""
    lines = []
    for line in shell.splitlines():
        if line.startswith("cmake "):
            continue
        line = line.replace("nq=$PWD", f"nq={ROOT}").replace("$nq/build", str(build))
        line = line.replace("$PWD/build", str(build)).replace("../myapp", str(tmp / "myapp"))
        if before and line.startswith(before):
            lines.append(put_code)
        lines.append(line)
    return "\n".join(lines)


def test_python_example_runs():
    code = [b for b in blocks(section(README, "Python"), "python") if "Context(" in b]
    assert len(code) == 1
    env = {"PYTHONPATH": str(ROOT / "bindings" / "python")}
    r = subprocess.run([sys.executable, "-c", code[0]], env={**os.environ, **env}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not shutil.which("cc") or not shutil.which("pkg-config"), reason="no C compiler or pkg-config")
def test_c_example_builds_and_runs(tmp_path):
    sec = section(README, "Using the C API")
    (code,) = [b for b in blocks(sec, "c") if "int main" in b]  # the complete program
    (shell,) = blocks(sec, "sh")
    (tmp_path / "example.c").write_text(code)
    out = run_steps(steps_for(shell, build_dir(), tmp_path, "", None), tmp_path, {})
    assert re.search(r"^\d+ of 1024 tokens kept, \d+ bytes, [\d.]+x$", out, flags=re.M), out
    assert "archive" in out


@pytest.mark.skipif(not shutil.which("cargo"), reason="no cargo")
def test_rust_example_builds_and_runs(tmp_path):
    sec = section(README, "Rust")
    (code,), (shell,) = blocks(sec, "rust"), blocks(sec, "sh")
    (tmp_path / "main.rs").write_text(code)
    script = steps_for(shell, build_dir(), tmp_path, f"cp {tmp_path / 'main.rs'} src/main.rs", "cargo run")
    out = run_steps(script, tmp_path, {"CARGO_NET_OFFLINE": "true"})
    assert re.search(r"^[\d.]+x, \d+ of 1024 tokens kept$", out, flags=re.M), out


@pytest.mark.skipif(not shutil.which("go"), reason="no go toolchain")
def test_go_example_builds_and_runs(tmp_path):
    sec = section(README, "Go")
    (code,), (shell,) = blocks(sec, "go"), blocks(sec, "sh")
    (tmp_path / "main.go").write_text(code)
    script = steps_for(shell, build_dir(), tmp_path, f"cp {tmp_path / 'main.go'} main.go", "go run")
    out = run_steps(script, tmp_path, {"GOPROXY": "off", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"})
    assert re.search(r"^[\d.]+x, \d+ of 1024 tokens kept$", out, flags=re.M), out


def preset_rows(text: str, heading: str):
    """(names, k_bits, v_bits, evicted fraction, ratio) of each row of a presets table."""
    rows = []
    for line in section(text, heading).splitlines():
        m = re.match(r"^\| ([^|]+?) \| (\d)(?:/| \| )(\d) \| (none|0|\d+%) \| ≈ (\d+)x", line)
        if m:
            cell = m.group(1)
            names = re.findall(r"`(\w+)`", cell) if "`" in cell else [n.strip() for n in cell.split("/")]
            evicted = 0.0 if m.group(4) in ("none", "0") else int(m.group(4)[:-1]) / 100
            rows.append((names, int(m.group(2)), int(m.group(3)), evicted, float(m.group(5))))
    return rows


@pytest.mark.parametrize("doc, heading", [(README, "Presets"), (DESIGN, "Presets")], ids=["README", "DESIGN"])
def test_presets_tables_match_the_library(doc, heading):
    rows = preset_rows(doc, heading)
    named = {n for r in rows for n in r[0]}
    assert {"lossless", "high", "conservative", "balanced", "max", "aggressive", "S", "M", "L", "XL"} <= named
    layers, tokens = 32, 32768
    fp16 = kv_cache_bytes(layers, 8, 128, tokens)
    for names, kb, vb, evicted, ratio in rows:
        for name in names:
            ctx = Context(128, 8, preset=name)
            p = ctx.layer_params()
            assert (p["k_bits"], p["v_bits"]) == (kb, vb), name
            assert p["evict_fraction"] == pytest.approx(evicted, abs=0.005), name
            # "≈ Nx": within 10% of the bytes the preset's nominal bits give on a long
            # context (explicit bits: no per-block choice)...
            nominal = Context(128, 8, preset=name, k_bits=kb, v_bits=vb, evict=p["evict_fraction"])
            assert fp16 / nominal.estimate_bytes(layers, tokens) == pytest.approx(ratio, rel=0.1), name
            # ...and the preset's own estimate is an upper bound of its blocks' bytes (blocks
            # may take an extra bit above the ratio floor), so never a larger ratio
            assert fp16 / ctx.estimate_bytes(layers, tokens) <= fp16 / nominal.estimate_bytes(layers, tokens) * 1.001


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md", "docs/DESIGN.md", "docs/FORMAT.md"])
def test_docs_hold_no_merge_markers(doc):
    marks = [i + 1 for i, line in enumerate((ROOT / doc).read_text().splitlines())
             if re.match(r"^(<{7} |>{7} |={7}$)", line)]
    assert marks == [], f"{doc}: unresolved merge markers at lines {marks}"
