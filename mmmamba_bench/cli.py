"""``mmmamba-bench``: one command-line entry for conversion, evaluation, distillation, profiling and reports.

Each subcommand lives in its own small function; heavy imports happen inside them so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("mmmamba_bench")


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="seed a Mamba-2 / hybrid student checkpoint from a Transformer teacher")
    p.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint directory (released layout)")
    p.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    p.add_argument("--layout", default="linear",
                   help="linear | hybrid | head-interleaved:N | tail-interleaved:N | head-stacked:K | "
                        "tail-stacked:K | comma list of mha/mamba2 (global index: embedding layers first)")
    p.add_argument("--init", default="mimic", choices=("mimic", "inherit", "scratch"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from mmmamba_bench.seeding import convert

    out = convert(args.teacher, args.out, layout=args.layout, init=args.init, seed=args.seed,
                  overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmmamba-bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS = [_add_convert]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        # Expected user-facing failures: one clear line, no traceback (use -v for one).
        if args.verbose:
            raise
        print(f"mmmamba-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
