"""Stage 7: Cavg/EER per task for each system (results.json/.md, plots) and RESULTS.md."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from apm.bin.cli import main, str2bool
from apm.report import collect_results, render_results_md, report_system
from apm.utils import ApmError, atomic_write
from apm.utils.provenance import provenance

log = logging.getLogger("report")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="report", description=__doc__)
    p.add_argument("--data", default="data", help="directory of the Kaldi data dirs")
    p.add_argument("--test-sets", required=True, help="tasks (test sets), space separated")
    p.add_argument("--output", default="RESULTS.md", help="the table gathering all systems")
    p.add_argument(
        "--skip-bad",
        type=str2bool,
        default=False,
        help="drop (and count) the trials of utterances without scores",
    )
    p.add_argument("--command-line", default="",
                   help="the command recorded in the table's provenance line")  # fmt: skip
    p.add_argument("exp", help="directory holding exp/<system>")
    p.add_argument("systems", nargs="+", help="systems to report")
    return p


def run(args: argparse.Namespace) -> None:
    tasks = args.test_sets.split()
    if not tasks:
        raise ApmError("--test-sets is empty; name the tasks to report")
    reported = []
    for system in args.systems:
        system_dir = Path(args.exp) / system
        if report_system(system_dir, args.data, tasks, args.skip_bad) is None:
            log.warning("%s: no scores for any of %s, left out", system_dir, " ".join(tasks))
        else:
            reported.append(system)
    if not reported:
        raise ApmError(
            f"no system among {' '.join(args.systems)} has scores under {args.exp}/<system>/"
            "scores for these tasks; run stage 6 first"
        )
    table = collect_results(args.exp, args.systems, tasks)
    with atomic_write(args.output, encoding="utf-8") as f:
        f.write(render_results_md(table, provenance(args.command_line)))
    log.info("wrote %s (%d of %d systems)", args.output, len(reported), len(args.systems))


if __name__ == "__main__":
    main(build_parser(), run)
