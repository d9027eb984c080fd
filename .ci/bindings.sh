#!/usr/bin/env bash
# Builds the library and runs the Rust and Go bindings' tests and examples against it
# (through the build tree's uninstalled pkg-config file). A language whose toolchain is
# missing is skipped with a note, unless NQ_REQUIRE_BINDINGS=1 (the default when
# CI=true: .ci/run installs cargo and go).
#   NQ_BUILD_DIR  build directory to use (default build; configured and built here)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${NQ_BUILD_DIR:-build}
if [ "${CI:-}" = true ]; then require=${NQ_REQUIRE_BINDINGS:-1}; else require=${NQ_REQUIRE_BINDINGS:-0}; fi

cmake -S . -B "$build" >/dev/null
cmake --build "$build" -j"$(nproc)" --target nexusquant >/dev/null
export PKG_CONFIG_PATH="$root/$build/pkgconfig-uninstalled${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
libdir=$(pkg-config --variable=libdir nexusquant)
test -f "$libdir/libnexusquant.so" || { echo "bindings.sh: no libnexusquant.so in $libdir" >&2; exit 1; }
ran=""
skipped=""

missing() {
  if [ "$require" = 1 ]; then echo "bindings.sh: $1 not found" >&2; exit 1; fi
  echo "bindings.sh: $1 not found, skipping" >&2
  skipped="$skipped $2"
}

if command -v cargo >/dev/null; then
  echo "== Rust (bindings/rust)"
  (
    cd bindings/rust
    export CARGO_NET_OFFLINE=true
    cargo test --offline
    cargo run --offline --quiet --example roundtrip -- balanced
    if cargo clippy --version >/dev/null 2>&1; then
      cargo clippy --offline --quiet --all-targets -- -D warnings
    fi
  )
  ran="$ran rust"
else
  missing cargo rust
fi

if command -v go >/dev/null; then
  echo "== Go (bindings/go)"
  (
    cd bindings/go
    export GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local
    export CGO_LDFLAGS="-Wl,-rpath,$libdir${CGO_LDFLAGS:+ $CGO_LDFLAGS}"
    test -z "$(gofmt -l .)" || { echo "gofmt:"; gofmt -l .; exit 1; }
    go vet ./...
    go test -count=1 ./...
    GODEBUG=cgocheck=2 go test -count=1 ./...
    if go test -race -count=1 -run '^$' ./... >/dev/null 2>&1; then
      go test -race -count=1 ./...
    else
      echo "bindings.sh: the Go race detector is not available here, skipping go test -race"
    fi
    go run ./cmd/nqexample -preset balanced
  )
  ran="$ran go"
else
  missing go go
fi
echo "bindings.sh: passed:${ran:- none}${skipped:+; skipped:$skipped}"
