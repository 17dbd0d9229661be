"""The paper comparison (egs/olr/local/reproduce_tables.sh): configs, job lists, grid growth,
dev choice, report. The recipe names its sets: --dev-tasks (grow, select), --test-sets and
--conditions (report). Run as `python -m paper_comparison` with egs/olr/local on PYTHONPATH
(egs/olr/path.sh does it).

configs <out>   write <out>/grid.yaml and <out>/conf/ (K and APM-K at every grid margin);
                print the selection jobs, one "<source> <seed> <system>" per line
grow    <out>   families whose dev choice sits at their grid's edge get the next margin;
                print the selection jobs of the new margins (none: the grid is final)
select  <out>   choose the margins on dev (<out>/choices.yaml), write the evaluation configs;
                print the evaluation jobs
report  <out>   <out>/RESULTS.md (tables, A/A coverage, Holm-adjusted primary contrasts,
                power, exploratory intervals), <out>/verdicts.json and <out>/margins.png
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from apm.bin.cli import main
from apm.report.plots import plot_margins
from apm.utils import ApmError, atomic_write
from apm.utils.provenance import provenance

from . import plan
from .report import PaperReport, margin_distribution, render_paper_md

log = logging.getLogger("paper_comparison")
DEFAULT_CLAIMS = Path(__file__).resolve().parents[2] / "conf" / "claims.yaml"


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected space-separated numbers, got '{text}'"
        ) from None
    if len(values) < 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected at least 2 positive margins, got '{text}'")
    return values


def _words(text: str) -> list[str]:
    if not text.split():
        raise argparse.ArgumentTypeError("expected at least one value")
    return text.split()


def _sources(text: str) -> list[str]:
    values = _words(text)
    unknown = [s for s in values if s not in plan.LABEL_SOURCES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown label source(s) {' '.join(unknown)}; available: "
            f"{' '.join(plan.LABEL_SOURCES)}"
        )
    return values


def _kinds(text: str) -> list[str]:
    values = _words(text)
    if set(values) - set(plan.KINDS):
        raise argparse.ArgumentTypeError(f"margin forms are {' '.join(plan.KINDS)}, got '{text}'")
    return values


def _conditions(text: str) -> dict[str, str]:
    pairs = [item.partition("=") for item in text.split()]
    bad = [c + s + t for c, s, t in pairs if not s or not t or c not in plan.CONDITIONS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected CONDITION=TASK pairs with CONDITION one of {' '.join(plan.CONDITIONS)}, "
            f"got '{' '.join(bad)}'"
        )
    return {c: t for c, _, t in pairs}


def _read_choices(out: Path) -> dict:
    path = out / "choices.yaml"
    if not path.is_file():
        raise ApmError(f"{path}: missing; run `select` first")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _print_jobs(jobs: list[plan.Job]) -> None:
    if jobs:
        print("\n".join(job.line() for job in jobs))


def _need_dev(args: argparse.Namespace) -> None:
    if not args.dev_tasks:
        raise ApmError(
            f"{args.command} needs --dev-tasks (the recipe's dev sets, which have trials)"
        )


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    claims = plan.load_claims(args.claims)
    plan.check_seeds(args.seeds, args.select_seeds)
    if args.command == "configs":
        grid = plan.write_grid(out, args.sources, args.kinds, args.margins, args.conf_dir)
        _print_jobs(plan.selection_jobs(grid, args.select_seeds))
    elif args.command == "grow":
        _need_dev(args)
        _print_jobs(plan.grow_grid(out, args.select_seeds, args.dev_tasks, args.conf_dir,
                                   args.grid_growth, args.margins))  # fmt: skip
    elif args.command == "select":
        _need_dev(args)
        choices = plan.choose_margins(out, args.select_seeds, args.dev_tasks, args.kinds)
        plan.write_eval_configs(args.conf_dir, out / "conf", choices, claims.did, args.exploratory)
        with atomic_write(out / "choices.yaml", encoding="utf-8") as f:
            yaml.safe_dump(choices, f, sort_keys=False)
        log.info("chosen on dev: %s", {s: {k: (c["constant"], c["apm"], c["apm_mean_margin"])
                                            for k, c in v.items()}
                                        for s, v in choices["sources"].items()})  # fmt: skip
        _print_jobs(plan.evaluation_jobs(args.seeds, choices, claims.did, args.exploratory))
    else:
        if not args.data or not args.test_sets:
            raise ApmError("report needs --data (the data dir with the test sets' trials) and "
                           "--test-sets (the recipe's test tasks)")  # fmt: skip
        stray = {c: t for c, t in args.conditions.items() if t not in args.test_sets}
        if stray:
            raise ApmError(f"--conditions {' '.join(f'{c}={t}' for c, t in stray.items())}: "
                           f"not among --test-sets ({' '.join(args.test_sets)})")  # fmt: skip
        report = PaperReport(out, Path(args.data), args.seeds, _read_choices(out),
                             args.test_sets, claims, args.exploratory, args.n_boot,
                             conditions=args.conditions)  # fmt: skip
        if args.margin_plot:
            src = next(iter(report.choices["sources"]))
            kind = next(iter(report.choices["sources"][src]))
            name = plan.system_name(f"apm_{kind}", report.choices["sources"][src][kind]["apm"])
            dist = margin_distribution(plan.system_dir(out, src, args.seeds[0], name),
                                       args.data, report.tasks)  # fmt: skip
            plot_margins(dist, out / "margins.png", f"APM margins: {name}")
            report.margin_plot, report.margin_plot_system = "margins.png", name
        text, verdicts = render_paper_md(report, provenance(args.command_line))
        with atomic_write(out / "verdicts.json", encoding="utf-8") as f:
            json.dump(verdicts, f, indent=1)
        with atomic_write(out / "RESULTS.md", encoding="utf-8") as f:
            f.write(text)
        log.info("wrote %s and %s", out / "RESULTS.md", out / "verdicts.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paper_comparison", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["configs", "grow", "select", "report"])
    parser.add_argument("--conf-dir", default="egs/olr/conf", help="the recipe's system configs")
    parser.add_argument("--claims", default=str(DEFAULT_CLAIMS),
                        help="the pre-registered contrasts (default: egs/olr/conf/claims.yaml)")  # fmt: skip
    parser.add_argument("--margins", type=_floats, default=[0.1, 0.2, 0.3],
                        help="initial grid of margins, space separated")  # fmt: skip
    parser.add_argument("--grid-growth", type=int, default=2,
                        help="how many margins a family's grid may add beyond an edge choice")  # fmt: skip
    parser.add_argument("--sources", type=_sources, default=["pocketsphinx"],
                        help=f"label sources ({' '.join(plan.LABEL_SOURCES)})")  # fmt: skip
    parser.add_argument("--kinds", type=_kinds, default=list(plan.KINDS),
                        help="margin forms compared (am aam)")  # fmt: skip
    parser.add_argument("--seeds", type=_words, default=[str(s) for s in range(1, 11)],
                        help="evaluation seeds, space separated")  # fmt: skip
    parser.add_argument("--select-seeds", type=_words, default=["101", "102", "103"],
                        help="seeds of the dev selection runs (never evaluation seeds)")  # fmt: skip
    parser.add_argument("--dev-tasks", type=_words, default=[],
                        help="the recipe's dev sets, space separated (grow, select)")  # fmt: skip
    parser.add_argument("--test-sets", type=_words, default=[],
                        help="the recipe's test tasks reported, space separated (report)")  # fmt: skip
    parser.add_argument("--conditions", type=_conditions, default={},
                        help="which test task holds each condition, as space-separated "
                             "CONDITION=TASK pairs (report; conditions: "
                             + "; ".join(f"{k}: {v}" for k, v in plan.CONDITIONS.items()) + ")")  # fmt: skip
    parser.add_argument("--exploratory", action="store_true",
                        help="also evaluate softmax, K at APM's nominal margin and normalised APM")  # fmt: skip
    parser.add_argument("--n-boot", type=int, default=1000, help="hierarchical bootstrap draws")
    parser.add_argument("--data", default="", help="data dir with the test sets (report)")
    parser.add_argument("--margin-plot", action="store_true",
                        help="draw margins.png (from the first chosen APM system's stage-5 confidence.scp)")  # fmt: skip
    parser.add_argument("--command-line", default="python -m paper_comparison report",
                        help="the command recorded in RESULTS.md")  # fmt: skip
    parser.add_argument("out", help="the comparison's output directory")
    return parser


if __name__ == "__main__":
    main(build_parser(), run)
