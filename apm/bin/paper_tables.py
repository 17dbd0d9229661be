"""The paper's comparison (a recipe's driver, e.g. egs/olr/local/reproduce_tables.sh): configs,
job lists, dev choice, report. The recipe names its sets: --dev-tasks (select), --test-sets and
--conditions (report).

configs <out>   write <out>/conf/ (softmax systems, K and APM-K at every grid margin); print
                the selection jobs, one "<source> <seed> <system>" per line
select  <out>   choose the margins on dev (<out>/choices.yaml), write the control configs;
                print the evaluation jobs
report  <out>   <out>/RESULTS.md (tables, per-claim bootstrap intervals and verdicts),
                <out>/verdicts.json and <out>/margins.png
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from apm.bin.cli import main
from apm.report import paper
from apm.report.plots import plot_margins
from apm.utils import ApmError, atomic_write
from apm.utils.provenance import provenance

log = logging.getLogger("paper_tables")


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected space-separated numbers, got '{text}'"
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive margins, got '{text}'")
    return values


def _words(text: str) -> list[str]:
    if not text.split():
        raise argparse.ArgumentTypeError("expected at least one value")
    return text.split()


def _sources(text: str) -> list[str]:
    values = _words(text)
    unknown = [s for s in values if s not in paper.LABEL_SOURCES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown label source(s) {' '.join(unknown)}; available: "
            f"{' '.join(paper.LABEL_SOURCES)}"
        )
    return values


def _kinds(text: str) -> list[str]:
    values = _words(text)
    if set(values) - set(paper.KINDS):
        raise argparse.ArgumentTypeError(f"margin forms are {' '.join(paper.KINDS)}, got '{text}'")
    return values


def _conditions(text: str) -> dict[str, str]:
    pairs = [item.partition("=") for item in text.split()]
    bad = [c + s + t for c, s, t in pairs if not s or not t or c not in paper.CONDITIONS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected CONDITION=TASK pairs with CONDITION one of {' '.join(paper.CONDITIONS)}, "
            f"got '{' '.join(bad)}'"
        )
    return {c: t for c, _, t in pairs}


def _read_choices(out: Path) -> dict:
    path = out / "choices.yaml"
    if not path.is_file():
        raise ApmError(f"{path}: missing; run `paper_tables select` first")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _print_jobs(jobs: list[paper.Job]) -> None:
    print("\n".join(job.line() for job in jobs))


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.command == "configs":
        paper.write_grid_configs(args.conf_dir, out / "conf", args.margins, args.kinds)
        _print_jobs(paper.selection_jobs(args.sources, args.select_seeds, args.margins, args.kinds))
    elif args.command == "select":
        if not args.dev_tasks:
            raise ApmError("select needs --dev-tasks (the recipe's dev sets, which have trials)")
        choices = paper.choose_margins(out, args.sources, args.select_seeds, args.margins,
                                       args.dev_tasks, args.kinds)  # fmt: skip
        paper.write_control_configs(args.conf_dir, out / "conf", choices)
        with atomic_write(out / "choices.yaml", encoding="utf-8") as f:
            yaml.safe_dump(choices, f, sort_keys=False)
        log.info("chosen on dev: %s", {s: {k: (c["constant"], c["apm"], c["apm_mean_margin"])
                                            for k, c in v.items()}
                                        for s, v in choices["sources"].items()})  # fmt: skip
        _print_jobs(paper.evaluation_jobs(args.seeds, choices, args.margins, args.full_grid))
    else:
        if not args.data or not args.test_sets:
            raise ApmError("report needs --data (the data dir with the test sets' trials) and "
                           "--test-sets (the recipe's test tasks)")  # fmt: skip
        stray = {c: t for c, t in args.conditions.items() if t not in args.test_sets}
        if stray:
            raise ApmError(f"--conditions {' '.join(f'{c}={t}' for c, t in stray.items())}: "
                           f"not among --test-sets ({' '.join(args.test_sets)})")  # fmt: skip
        report = paper.PaperReport(out, Path(args.data), args.seeds, _read_choices(out),
                                   args.test_sets, args.full_grid, args.n_boot,
                                   conditions=args.conditions)  # fmt: skip
        if args.margin_plot:
            src = next(iter(report.choices["sources"]))
            name = paper.system_name("apm_am", report.choices["sources"][src]["am"]["apm"])
            dist = paper.margin_distribution(paper.system_dir(out, src, args.seeds[0], name),
                                             args.data, report.tasks)  # fmt: skip
            plot_margins(dist, out / "margins.png", f"APM margins: {name}")
            report.margin_plot, report.margin_plot_system = "margins.png", name
        text, records = paper.render_paper_md(report, provenance(args.command_line))
        with atomic_write(out / "verdicts.json", encoding="utf-8") as f:
            json.dump(paper.verdict_records(records), f, indent=1)
        with atomic_write(out / "RESULTS.md", encoding="utf-8") as f:
            f.write(text)
        log.info("wrote %s and %s", out / "RESULTS.md", out / "verdicts.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paper_tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["configs", "select", "report"])
    parser.add_argument("--conf-dir", default="egs/olr/conf", help="the recipe's system configs")
    parser.add_argument("--margins", type=_floats, default=[0.1, 0.2, 0.3],
                        help="grid of margins, space separated")  # fmt: skip
    parser.add_argument("--sources", type=_sources, default=["pocketsphinx"],
                        help=f"label sources ({' '.join(paper.LABEL_SOURCES)})")  # fmt: skip
    parser.add_argument("--kinds", type=_kinds, default=list(paper.KINDS),
                        help="margin forms compared (am aam)")  # fmt: skip
    parser.add_argument("--seeds", type=_words, default=["1", "2", "3", "4", "5"],
                        help="evaluation seeds, space separated")  # fmt: skip
    parser.add_argument("--select-seeds", type=_words, default=["1"],
                        help="seeds of the dev selection runs")  # fmt: skip
    parser.add_argument("--dev-tasks", type=_words, default=[],
                        help="the recipe's dev sets, space separated; the margin choice "
                             "averages them (select)")  # fmt: skip
    parser.add_argument("--test-sets", type=_words, default=[],
                        help="the recipe's test tasks reported, space separated (report)")  # fmt: skip
    parser.add_argument("--conditions", type=_conditions, default={},
                        help="which test task holds each condition, as space-separated "
                             "CONDITION=TASK pairs; the claims name short, cross and open "
                             "(report; conditions: " + "; ".join(f"{k}: {v}" for k, v in
                                                       paper.CONDITIONS.items()) + ")")  # fmt: skip
    parser.add_argument("--full-grid", action="store_true",
                        help="evaluate every grid system on every seed too")  # fmt: skip
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--data", default="", help="data dir with the test sets (report)")
    parser.add_argument("--margin-plot", action="store_true",
                        help="draw margins.png (from the chosen APM-AM system's stage-5 confidence.scp)")  # fmt: skip
    parser.add_argument("--command-line", default="python -m apm.bin.paper_tables report",
                        help="the command recorded in RESULTS.md")  # fmt: skip
    parser.add_argument("out", help="the comparison's output directory")
    return parser


if __name__ == "__main__":
    main(build_parser(), run)
