"""Shared entry-point wrapper for the `apm.bin` tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from apm.utils.errors import ApmError
from apm.utils.log import setup_logging


def str2bool(value: str) -> bool:
    """argparse type for Kaldi-style `true`/`false` option values."""
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], None]) -> None:
    """Parse args, set up logging (`--log-file`, `--verbose`), run, and turn ApmError into a
    one-line `ERROR:` message with exit status 1."""
    parser.add_argument("--log-file", default=None, help="also write the log to this file")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    setup_logging(args.log_file, args.verbose)
    try:
        run(args)
    except ApmError as e:
        logging.getLogger(parser.prog).error("%s", e)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
