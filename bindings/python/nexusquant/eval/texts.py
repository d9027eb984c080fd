"""Evaluation texts that need nothing beside the project.

``python-stdlib``: Python source code, read at run time from the standard library of
the Python that runs nq-eval (``sysconfig.get_paths()["stdlib"]``; PSF licence), so no
code text is shipped. A fixed list of long, stable modules is concatenated in order
(modules missing from an installation are skipped, and the row names the modules
used), and the result is written once to the cache directory so that the harness reads
it like any other text file.
"""

import sysconfig
from pathlib import Path
from typing import List, Tuple

CODE_TEXT = "python-stdlib"

# Long pure-Python modules present in every CPython 3 for years.
STDLIB_MODULES = ("argparse.py", "textwrap.py", "difflib.py", "inspect.py", "dataclasses.py",
                  "configparser.py", "tarfile.py", "shutil.py", "subprocess.py")


def stdlib_code() -> Tuple[str, List[str]]:
    """(text, modules used): the listed standard-library modules, each preceded by a
    comment line with its name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, used = [], []
    for name in STDLIB_MODULES:
        p = root / name
        if p.is_file():
            parts.append(f"# ---- {name}\n" + p.read_text(encoding="utf-8"))
            used.append(name)
    if not parts:
        raise FileNotFoundError(f"no standard-library module found under {root}")
    return "\n".join(parts), used


def materialise(name: str, cache: Path) -> Path:
    """The path of a named text, written under ``cache`` (``python-stdlib`` only)."""
    if name != CODE_TEXT:
        raise ValueError(f"unknown named text {name!r} (known: {CODE_TEXT})")
    text, _ = stdlib_code()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{CODE_TEXT}.txt"
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        tmp = out.with_suffix(".part")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    return out
