"""python -m nexusquant.distributed --demo ...: the prefill-to-decode handoff demo."""
import argparse
import sys

from . import demo


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m nexusquant.distributed",
                                description="Move a compressed KV cache between two ranks and time "
                                            "the first decode step against fp16 pages.")
    p.add_argument("--demo", action="store_true", help="run the handoff demo")
    p.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--preset", default="lossless")
    p.add_argument("--form", choices=["archive", "resident"], default=None,
                   help="wire form (default: resident for nccl, archive for gloo)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; medians are reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--rank", type=int, default=None, help="run one rank only (both when omitted)")
    p.add_argument("--init-method", default=None, help="torch.distributed init URL (tcp://host:port)")
    p.add_argument("--out", default=None, help="rank 1: write the JSON result here")
    p.add_argument("--link", default=None, help="a label for the link (e.g. '25gbit tbf'); recorded only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    if not a.demo:
        print("nothing to do: pass --demo (see --help)", file=sys.stderr)
        return 2
    return demo.main(a)


if __name__ == "__main__":
    sys.exit(main())
