"""The paper's comparison (local/reproduce_tables.sh): system configs, margin choice, report.

configs  <conf-dir> <out>   write <out>/conf/ baselines; print their names
select   <conf-dir> <out>   pick the best AM/AAM margins (margins.yaml), write the APM
                            configs into <out>/conf/; print their names
report   <out>              <out>/RESULTS.md and <out>/margins.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from apm.bin.cli import main
from apm.report import paper
from apm.report.plots import plot_margins
from apm.utils import ApmError, atomic_write

log = logging.getLogger("paper_tables")


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected space-separated numbers, got '{text}'"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one margin")
    return values


def _read_chosen(out: Path) -> dict[str, float]:
    path = out / "margins.yaml"
    if not path.is_file():
        raise ApmError(f"{path}: missing; run `paper_tables select` first")
    with open(path, encoding="utf-8") as f:
        return {k: float(v) for k, v in yaml.safe_load(f).items()}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.command == "configs":
        print(" ".join(paper.write_baseline_configs(args.conf_dir, out / "conf", args.margins)))
    elif args.command == "select":
        tasks = args.select_tasks.split() or None
        chosen = paper.select_margins(out, args.seeds.split(), args.margins, tasks)
        log.info("chosen margins: %s", chosen)
        with atomic_write(out / "margins.yaml", encoding="utf-8") as f:
            yaml.safe_dump(chosen, f)
        print(" ".join(paper.write_apm_configs(args.conf_dir, out / "conf", chosen)))
    else:
        report = paper.PaperReport(out, args.seeds.split(), args.margins, _read_chosen(out),
                                   args.test_sets.split())  # fmt: skip
        if args.data:
            name = paper.system_name("apm_am", report.chosen["am"])
            system_dir = out / f"apm_seed{report.seeds[0]}" / name
            dist = paper.margin_distribution(system_dir, args.data, report.tasks)
            plot_margins(dist, out / "margins.png", f"APM margins: {name}")
            report.margin_plot, report.margin_plot_system = "margins.png", name
        with atomic_write(out / "RESULTS.md", encoding="utf-8") as f:
            f.write(paper.render_paper_md(report))
        log.info("wrote %s", out / "RESULTS.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paper_tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["configs", "select", "report"])
    parser.add_argument("--conf-dir", default="egs/olr/conf", help="the recipe's system configs")
    parser.add_argument("--margins", type=_floats, default=[0.1, 0.2, 0.3],
                        help="AM/AAM margins, space separated")  # fmt: skip
    parser.add_argument("--seeds", default="1", help="seeds, space separated")
    parser.add_argument("--select-tasks", default="",
                        help="tasks the margin choice averages (default: every scored task)")  # fmt: skip
    parser.add_argument("--test-sets", default=" ".join(paper.TASKS), help="table columns")
    parser.add_argument("--data", default="",
                        help="data dir of the test sets: draws margins.png (empty: no plot)")  # fmt: skip
    parser.add_argument("out", help="the comparison's output directory")
    return parser


if __name__ == "__main__":
    main(build_parser(), run)
