#!/usr/bin/env bash
# Prints the name of every function the public header declares with NQ_API, one per
# line, in header order. The export check and the link test both read this list, so
# neither keeps a copy that could drift from the header.
# Usage: abi_functions.sh [HEADER]   (default: include/nexusquant.h of this checkout)
set -euo pipefail
header=${1:-"$(dirname "$0")/../include/nexusquant.h"}
perl -0777 -ne '
  s{/\*.*?\*/}{ }gs;          # block comments
  s{//[^\n]*}{}g;             # line comments
  s{^[ \t]*#[^\n]*}{}mg;      # preprocessor lines (the NQ_API definition itself)
  while (/\bNQ_API\b([^;{}]*?)\b(nq_\w+)\s*\(/g) { print "$2\n"; }
' "$header"
