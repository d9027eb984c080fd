"""A clone of the project must work with nothing beside it: what a user runs (the
README's commands, tools/demo.sh, nq-eval's defaults, the bindings) may not read
the evaluation data kept in a folder beside the checkout on the development
machines. Tests, CI
scripts, benchmark records and documentation may name it."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# The parent folder's shared/ ("up" + "/shared"), "shared/data", or either joined from
# path pieces (".." / "shared", "shared", "data"). The fixtures below spell the path as
# UP so that this file does not name it either.
PIECE = r" *[,/+] *"
UP = "/".join(["..", "shared"])
PATTERN = (r"\.\./shared|shared/data|[\"']\.\.[\"']" + PIECE + r"[\"']shared[\"']|[\"']shared[\"']" + PIECE
           + r"[\"']data[\"']")
ALLOWED = [":(exclude)tests/", ":(exclude).ci/", ":(exclude)bench/", ":(exclude)*.md",
           ":(exclude,glob)**/tests/**", ":(exclude)*_test.go"]
DEFAULT_SIZE = 299_868  # bytes of the shipped excerpt (nexusquant/data/README.md)


def offending_lines(root: Path) -> list:
    """Lines of tracked files outside the allowed places that name the shared data."""
    r = subprocess.run(["git", "-C", str(root), "grep", "-n", "-I", "-E", PATTERN, "--", "."] + ALLOWED,
                       capture_output=True, text=True)
    if r.returncode not in (0, 1):  # 1 = no match
        raise RuntimeError(f"git grep failed: {r.stderr}")
    return r.stdout.splitlines()


def _git_checkout(root: Path) -> bool:
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return r.returncode == 0 and Path(r.stdout.strip()).resolve() == root


@pytest.mark.skipif(not _git_checkout(ROOT), reason="not run from a git checkout of the project")
def test_nothing_a_user_runs_names_the_shared_data():
    assert offending_lines(ROOT) == []


def test_the_check_finds_what_it_guards_against(tmp_path):
    # The same check on a small repository: files a user runs are reported,
    # tests, CI, bench and docs are not.
    files = {
        "tools/demo.sh": f"text={UP}/data/wikitext-2-raw-test.txt\n",
        "pkg/cli.py": 'base = root / ".." / "shared" / "data"\n',
        "pkg/other.py": "p = os.path.join(here, 'shared', 'data')\n",
        "pkg/fine.py": "evict_mode = 'shared'\n",
        "pkg/up.py": "base = Path.cwd() / '..' / 'shared'\n",
        "README.md": f"nq-eval --text {UP}/data/x.txt\n",
        "tests/t.py": f"p = '{UP}/data'\n",
        "bindings/python/tests/conftest.py": 'os.path.join(here, "shared", "data")\n',
        ".ci/run": f"ls {UP}\n",
        "bench/run.sh": f"cat {UP}/data/x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    found = sorted(line.split(":")[0] for line in offending_lines(tmp_path))
    assert found == ["pkg/cli.py", "pkg/other.py", "pkg/up.py", "tools/demo.sh"]


def test_packaged_text_is_found_without_the_shared_data():
    from nexusquant.eval.cli import DEFAULT_TEXT, default_texts
    texts = default_texts()
    assert texts == [DEFAULT_TEXT]
    assert "shared" not in DEFAULT_TEXT.parts
    data = DEFAULT_TEXT.read_bytes()
    assert len(data) == DEFAULT_SIZE
    assert data.startswith(b"First Citizen:\n")
    readme = (DEFAULT_TEXT.parent / "README.md").read_text()
    assert hashlib.sha256(data).hexdigest() in readme  # the recorded digest is the shipped file's


def test_installed_package_carries_the_text(tmp_path):
    # What `pip install ./bindings/python` puts on disk, imported from elsewhere.
    # The build runs offline with this interpreter's setuptools (>= 61 reads pyproject
    # metadata; before 70.1 it builds wheels through the separate wheel package).
    setuptools = pytest.importorskip("setuptools")
    version = tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    if version < (61, 0):
        pytest.skip(f"setuptools {setuptools.__version__} is older than the package needs")
    if version < (70, 1):
        pytest.importorskip("wheel")
    # From a copy of the sources, so that no earlier build's file list leaks in and the
    # checkout gets no build outputs.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "bindings" / "python", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    probe = ("from nexusquant.eval.cli import default_texts; t = default_texts(); "
             "print(t[0] if t else '', t[0].stat().st_size if t else 0)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    fields = out.stdout.split()
    assert len(fields) == 2, f"the installed package carries no default text ({out.stdout!r})"
    path, size = fields
    assert Path(path).resolve().is_relative_to(target.resolve())
    assert int(size) == DEFAULT_SIZE
