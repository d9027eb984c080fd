#!/usr/bin/env bash
# The handoff demo across a throttled link: the two ranks run in two network namespaces
# joined by a veth pair whose both ends are shaped by a token bucket (tc tbf), the
# stand-in for two hosts on a RATE link. Needs root (ip netns, tc from iproute2).
#
#   bash benchmarks/handoff_link.sh 25gbit --tokens 2048 --preset lossless [--form resident]
#   bash benchmarks/handoff_link.sh none ...      # the same veth pair, unshaped
#
# Prints rank 1's JSON (python -m nexusquant.distributed --demo --json).
set -euo pipefail
rate=$1; shift
here=$(cd "$(dirname "$0")/.." && pwd)
ns_a=nqhandoff_a ns_b=nqhandoff_b
out=$(mktemp)
cleanup() { ip netns del "$ns_a" 2>/dev/null || true; ip netns del "$ns_b" 2>/dev/null || true; rm -f "$out"; }
trap cleanup EXIT
cleanup
ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add nqa netns "$ns_a" type veth peer name nqb netns "$ns_b"
ip -n "$ns_a" addr add 10.231.0.1/24 dev nqa
ip -n "$ns_b" addr add 10.231.0.2/24 dev nqb
for pair in "$ns_a nqa" "$ns_b nqb"; do
  read -r ns dev <<<"$pair"
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "$dev" mtu 65000 up
  if [ "$rate" != none ]; then
    # burst: 4 ms of traffic (well above rate/HZ), queue: 50 ms
    bits=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+(?:\.\d+)?)([kmg]?)bit','$rate'); \
print(int(float(m[1])*{'':1,'k':1e3,'m':1e6,'g':1e9}[m[2]]))")
    burst=$(( bits / 8 / 250 ))
    tc -n "$ns" qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" latency 50ms
  fi
done
port=29533
init="tcp://10.231.0.1:$port"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
ip netns exec "$ns_a" env GLOO_SOCKET_IFNAME=nqa python3 -m nexusquant.distributed --demo --rank 0 \
  --init-method "$init" --link "$rate" "$@" &
pid=$!
ip netns exec "$ns_b" env GLOO_SOCKET_IFNAME=nqb python3 -m nexusquant.distributed --demo --rank 1 \
  --init-method "$init" --link "$rate" --out "$out" "$@"
wait "$pid"
python3 -m json.tool "$out"
