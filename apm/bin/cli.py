"""Shared entry-point wrapper for the `apm.bin` tools."""

from __future__ import annotations

import argparse
import errno
import io
import logging
import os
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


# errno values that mean "this cannot be written" whatever the call was
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}
# locals that name the file a function works on, most telling first
PATH_LOCALS = ("path", "dst", "out", "output", "out_dir", "filename", "file", "directory")


def oserror_path(e: OSError) -> str | None:
    """The file an OSError is about: its own filename(s), else (a write on a full disk carries
    none) the innermost frame of its traceback that holds a path or an open file."""
    if e.filename is not None:
        name = os.fsdecode(e.filename)
        return f"{name} -> {os.fsdecode(e.filename2)}" if e.filename2 is not None else name
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        local = frame.f_locals
        for name in PATH_LOCALS:
            value = local.get(name)
            if isinstance(value, (str, os.PathLike)) and os.fspath(value):
                return os.fsdecode(os.fspath(value))
        for value in local.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def describe_oserror(e: OSError) -> str:
    """One line naming the path and the system's reason, e.g.
    `cannot write exp/x/final.pt: No space left on device`."""
    reason = e.strerror or str(e) or type(e).__name__
    verb = "cannot write" if e.errno in WRITE_ERRNOS else "cannot access"
    path = oserror_path(e)
    return f"{verb} {path}: {reason}" if path else f"{verb} a file: {reason}"


def main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], None]) -> None:
    """Parse args, set up logging (`--log-file`, `--verbose`), run, and turn ApmError and
    OSError (full disk, read-only or missing directory...) into a one-line `ERROR` message
    naming the problem (and the path) with exit status 1, instead of a traceback."""
    parser.add_argument("--log-file", default=None, help="also write the log to this file")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    log = logging.getLogger(parser.prog)
    try:
        setup_logging(args.log_file, args.verbose)
        run(args)
    except ApmError as e:
        log.error("%s", e)
        sys.exit(1)
    except OSError as e:
        if not logging.getLogger().handlers:  # the log file itself could not be opened
            setup_logging(None, args.verbose)
        log.error("%s", describe_oserror(e))
        log.debug("traceback of the OSError", exc_info=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
