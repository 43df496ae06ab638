"""Command line: `gptoss-mcp <command>` (also `python -m gptoss_mcp`). Logs go to stderr only."""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_BAD_ARGUMENTS = 2
EXIT_MODEL_FAILED = 3


def _make_model(args: argparse.Namespace) -> int:
    from engine.synthetic import write_model

    try:
        write_model(args.out, preset=args.preset, layers=args.layers, seed=args.seed,
                    original=not args.no_original)
    except OSError as e:
        logging.getLogger("gptoss_mcp").error("could not write %s: %s", args.out, e)
        return EXIT_MODEL_FAILED
    return 0


def build_parser() -> argparse.ArgumentParser:
    from engine.synthetic import PRESETS

    parser = argparse.ArgumentParser(prog="gptoss-mcp", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-model", help="write a random gpt-oss checkpoint in the real format")
    make.add_argument("out", help="output directory")
    make.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    make.add_argument("--layers", type=_positive_int, default=None, help="override the preset's depth")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--no-original", action="store_true", help="skip the original/ layout copy")
    make.set_defaults(run=_make_model)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits with 2 on bad arguments
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
