#!/usr/bin/env bash
# Checks that libnexusquant.so exports exactly the NQ_API functions of the public
# header, each under the symbol version node NEXUSQUANT_0.1, and nothing else; and
# that the linker version script lists the same names.
# Usage: check_exports.sh LIBRARY [HEADER [VERSION_SCRIPT]]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lib=${1:?usage: check_exports.sh LIBRARY [HEADER [VERSION_SCRIPT]]}
header=${2:-$here/../include/nexusquant.h}
map=${3:-$here/../src/nexusquant.map}
node=NEXUSQUANT_0.1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0

bash "$here/abi_functions.sh" "$header" | sort > "$tmp/header"
if [ ! -s "$tmp/header" ]; then echo "check_exports: no NQ_API functions found in $header" >&2; exit 1; fi
if [ -n "$(uniq -d "$tmp/header")" ]; then
  echo "check_exports: functions declared twice in the header:" >&2; uniq -d "$tmp/header" >&2; status=1
fi
sort -u -o "$tmp/header" "$tmp/header"

# Every defined dynamic symbol: name without its @@version suffix.
nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' | sort -u > "$tmp/defined"
# Defined symbols that are not functions in the header: only the version node itself
# (an absolute symbol) may be there.
comm -13 "$tmp/header" "$tmp/defined" | grep -vx "$node" > "$tmp/extra" || true
comm -23 "$tmp/header" "$tmp/defined" > "$tmp/missing" || true
if [ -s "$tmp/missing" ]; then
  echo "check_exports: declared in the header but not exported by $lib:" >&2; sed 's/^/  /' "$tmp/missing" >&2; status=1
fi
if [ -s "$tmp/extra" ]; then
  echo "check_exports: exported by $lib but not declared in the header:" >&2; sed 's/^/  /' "$tmp/extra" >&2; status=1
fi
if ! grep -qx "$node" "$tmp/defined"; then
  echo "check_exports: $lib defines no version node $node" >&2; status=1
fi

# The version of every exported function (objdump prints it for each dynamic symbol).
objdump -T "$lib" | awk '$2 == "g" && $NF ~ /^nq_/ {print $NF, $(NF-1)}' | sort -u > "$tmp/versions"
awk -v node="$node" '$2 != node {print "  " $1 " has version " $2}' "$tmp/versions" > "$tmp/badver"
if [ -s "$tmp/badver" ]; then
  echo "check_exports: functions outside the version node $node:" >&2; cat "$tmp/badver" >&2; status=1
fi
if [ "$(wc -l < "$tmp/versions")" -ne "$(wc -l < "$tmp/header")" ]; then
  echo "check_exports: objdump lists $(wc -l < "$tmp/versions") versioned nq_ functions, the header declares $(wc -l < "$tmp/header")" >&2
  status=1
fi

# The version script: names in its global section.
if [ -f "$map" ]; then
  sed -n "/^$node[[:space:]]*{/,/}/p" "$map" | sed -n '/global:/,/local:/p' |
    grep -o '\bnq_[A-Za-z0-9_]*' | sort -u > "$tmp/map"
  if ! diff -u "$tmp/header" "$tmp/map" > "$tmp/mapdiff"; then
    echo "check_exports: $map differs from the header (- header, + version script):" >&2
    tail -n +3 "$tmp/mapdiff" | grep '^[-+]' >&2; status=1
  fi
fi

if [ "$status" = 0 ]; then
  echo "check_exports: $(wc -l < "$tmp/header") functions exported under $node, nothing else"
fi
exit "$status"
