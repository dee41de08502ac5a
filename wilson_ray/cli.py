"""``wilson-ray`` command line: one sub-command module per area in ``wilson_ray/commands/``.

Every user-caused error (``UserError``) is printed on one line and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wilson_ray import __version__
from wilson_ray.errors import UserError

# Sub-command modules; each exposes ``register(subparsers)`` that adds its parser(s) with ``func=handler``.
COMMAND_MODULES = ("data", "train", "sweep")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wilson-ray",
        description="Incremental semantic segmentation from image labels (WILSON), on one process or a Ray cluster.",
    )
    parser.add_argument("--version", action="version", version=f"wilson-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"wilson_ray.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"wilson-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wilson-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
