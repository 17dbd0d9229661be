"""Logging set-up shared by every CLI (console on stderr and, optionally, a log file), and
the progress report of long loops (`progress`: a bar on a terminal, log lines in files)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


def setup_logging(log_file: str | os.PathLike | None = None, verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=level, format=FORMAT, datefmt="%H:%M:%S", handlers=handlers, force=True
    )


PROGRESS_ENV = "APM_PROGRESS"  # "bar" or "log" forces the kind of progress report
PROGRESS_STEP = 0.25  # the log reports at most every quarter of a loop ...
PROGRESS_MIN_INTERVAL = 10.0  # ... and at most every this many seconds


def progress(
    iterable: Iterable | None = None,
    desc: str = "",
    total: int | None = None,
    unit: str = "it",
    *,
    initial: int = 0,
    disable: bool = False,
    leave: bool = True,
    mininterval: float = 0.1,
    logger: logging.Logger | None = None,
):
    """Progress of a loop: a tqdm bar when stderr is a terminal, else (a log file, `tee` in
    the stage runner) a few log lines: a quarter of the way at most (and 10 s apart at most
    often) and a summary at the end with counts and rate. `APM_PROGRESS=bar|log` forces one.

    Use it as tqdm: iterate over it, or `update(n)` / `set_postfix(...)` / `close()` it, or use
    it in a `with` block; `disable` reports nothing (e.g. on DDP ranks other than 0)."""
    forced = os.environ.get(PROGRESS_ENV, "")
    tty = forced == "bar" or (forced != "log" and _stderr_is_tty())
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if tty:
        from tqdm import tqdm

        return tqdm(
            iterable, desc=desc, total=total, unit=unit, initial=initial, disable=disable,
            leave=leave, mininterval=mininterval,
        )  # fmt: skip
    return LogProgress(
        iterable, desc, total, unit, initial=initial, disable=disable,
        logger=logger or logging.getLogger("apm.progress"),
    )  # fmt: skip


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class LogProgress:
    """The tqdm subset the recipe uses, reporting through logging instead of a bar."""

    def __init__(
        self,
        iterable: Iterable | None,
        desc: str,
        total: int | None,
        unit: str,
        *,
        initial: int = 0,
        disable: bool = False,
        logger: logging.Logger,
    ) -> None:
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.n = self.initial = initial
        self.disable, self.log = disable, logger
        self.postfix = ""
        self.closed = False
        self.start = self.last = time.monotonic()
        self.next_fraction = PROGRESS_STEP
        if not disable and total and initial:
            self.log.info("%s: resuming at %d/%d %s", desc, initial, total, unit)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update()
        except BaseException:  # an error, or the loop left early (GeneratorExit)
            self._finish(stopped=True)
            raise
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._finish(stopped=exc_type is not None)

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable or not self.total:
            return
        fraction = (self.n - self.initial) / max(self.total - self.initial, 1)
        if fraction >= self.next_fraction and fraction < 1:
            while self.next_fraction <= fraction:
                self.next_fraction += PROGRESS_STEP
            now = time.monotonic()
            if now - self.last >= PROGRESS_MIN_INTERVAL:
                self.last = now
                self.log.info("%s: %s", self.desc, self._counts(now))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs):
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        self._finish(stopped=False)

    def _finish(self, stopped: bool) -> None:
        """Log the final counts once: "done", or "stopped at" when an exception is passing."""
        if self.closed:
            return
        self.closed = True
        if not self.disable and (self.n > self.initial or self.total):
            how = "stopped at" if stopped else "done,"
            self.log.info("%s: %s %s", self.desc, how, self._counts(time.monotonic()))

    def _counts(self, now: float) -> str:
        elapsed = now - self.start
        done = self.n - self.initial
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
        of = f"/{self.total}" if self.total else ""
        text = f"{self.n}{of} {self.unit} in {elapsed:.1f} s ({rate} {self.unit}/s)"
        return text + (f", {self.postfix}" if self.postfix else "")
