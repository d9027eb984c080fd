#!/usr/bin/env bash
# Writes a C file that takes the address of every NQ_API function of the header, so that
# linking it against the shared library fails when a declared function is missing.
# The list comes from the header at build time (tools/abi_functions.sh), never from a
# copy. Usage: gen_link_test.sh HEADER OUTPUT.c
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
header=$1
out=$2
names=$(bash "$here/../../tools/abi_functions.sh" "$header")
count=$(printf '%s\n' "$names" | grep -c .)
{
  echo "/* Generated from $(basename "$header") by tests/abi/gen_link_test.sh. Do not edit. */"
  echo '#include <stdio.h>'
  echo '#include "nexusquant.h"'
  echo
  echo 'typedef void (*nq_any_fn)(void);'
  echo 'struct nq_named_fn { const char *name; nq_any_fn fn; };'
  echo
  echo '/* volatile: the addresses must be taken at run time from the dynamic symbols. */'
  echo 'static volatile struct nq_named_fn functions[] = {'
  printf '%s\n' "$names" | sed 's/.*/    {"&", (nq_any_fn)\&&},/'
  echo '};'
  echo
  echo 'int main(void) {'
  echo '    size_t i, n = sizeof functions / sizeof functions[0];'
  echo '    int bad = 0;'
  echo "    if (n != $count) bad = 1;"
  echo '    for (i = 0; i < n; ++i)'
  echo '        if (!functions[i].fn) {'
  echo '            fprintf(stderr, "%s has no address\n", functions[i].name);'
  echo '            bad = 1;'
  echo '        }'
  echo '    printf("test_link_all: %zu functions linked from the shared library\n", n);'
  echo '    return bad;'
  echo '}'
} > "$out.tmp"
mv "$out.tmp" "$out"
