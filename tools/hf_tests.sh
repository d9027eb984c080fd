#!/usr/bin/env bash
# Runs the transformers integration tests (bindings/python/tests/test_hf*.py) under each
# transformers release listed in bindings/python/transformers-versions.txt. The installed
# release is used as is; any other is installed (pip --target, without dependencies: they
# are shared with the installed one) under build/hf-transformers-<version> and put first
# on PYTHONPATH. Without torch or transformers (or when a release cannot be installed)
# the tests are skipped with a note, unless NQ_REQUIRE_HF=1 (the default when CI=true;
# .ci/run sets it), where that fails: CI must test every listed release.
#   NEXUSQUANT_LIBRARY  the library to test (default build/libnexusquant.so)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export NEXUSQUANT_LIBRARY=${NEXUSQUANT_LIBRARY:-$root/build/libnexusquant.so}
if [ "${CI:-}" = true ]; then require=${NQ_REQUIRE_HF:-1}; else require=${NQ_REQUIRE_HF:-0}; fi

skip_or_fail() {
  if [ "$require" = 1 ]; then echo "hf_tests.sh: $1 (NQ_REQUIRE_HF=1: the integration must be tested)" >&2; exit 1; fi
  echo "hf_tests.sh: $1; SKIPPING the transformers integration tests" >&2
  exit 0
}

python3 -c "import torch" 2>/dev/null || skip_or_fail "torch is not installed (pip install torch)"
installed=$(python3 -c "import transformers; print(transformers.__version__)" 2>/dev/null) ||
  skip_or_fail "transformers is not installed (pip install './bindings/python[hf]')"

versions=$(grep -v '^#' bindings/python/transformers-versions.txt | tr -s ' \n' ' ')
for v in $versions; do
  path=""
  if [ "$v" != "$installed" ]; then
    path=$root/build/hf-transformers-$v
    if [ ! -f "$path/transformers/__init__.py" ]; then
      rm -rf "$path"
      python3 -m pip install -q --no-deps --target "$path" "transformers==$v" >"$path.log" 2>&1 || true
      if [ ! -f "$path/transformers/__init__.py" ]; then
        cat "$path.log" >&2
        skip_or_fail "transformers $v could not be installed"
      fi
    fi
  fi
  got=$(PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}" python3 -c "import transformers; print(transformers.__version__)")
  [ "$got" = "$v" ] || { echo "hf_tests.sh: asked for transformers $v, imported $got" >&2; exit 1; }
  echo "== transformers $v"
  ( cd bindings/python &&
    PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest -q -p no:cacheprovider tests/test_hf.py tests/test_hf_models.py tests/test_hf_attend.py )
done
