"""The cross-system table (RESULTS.md): rows systems, columns tasks, cells "Cavg / EER%".

`collect_results` gathers `exp/<system>/results.json` files; `render_results_table` turns
cells holding one result (a value) or several (e.g. seeds: mean ± sample std) into markdown,
so egs/olr/local/reproduce_tables.sh can group systems by seed and reuse it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apm.utils import ApmError

MISSING = "missing"


@dataclass
class ResultsTable:
    systems: list[str]  # as asked for, including missing ones
    tasks: list[str]  # columns: every task any system has (scored or missing), first seen order
    open_set: set[str]  # tasks scored open-set
    cells: dict[str, dict[str, dict]]  # system -> task -> results.json task entry
    missing: dict[str, str] = field(default_factory=dict)  # system -> why it has no results
    missing_tasks: dict[str, list[str]] = field(default_factory=dict)  # system -> tasks

    def cell_lists(self) -> dict[str, dict[str, list[dict]]]:
        """cells with one-element lists, the input `render_results_table` takes."""
        return {s: {t: [r] for t, r in tasks.items()} for s, tasks in self.cells.items()}


def collect_results(
    exp_root: str | os.PathLike, systems: Sequence[str], tasks: Sequence[str] | None = None
) -> ResultsTable:
    """Read exp_root/<system>/results.json of every system; columns `tasks` if given."""
    table = ResultsTable(list(systems), list(tasks or []), set(), {})
    for system in systems:
        path = Path(exp_root) / system / "results.json"
        if not path.is_file():
            table.missing[system] = f"no {path} (no scores: run stages 4-6 for it)"
            continue
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
            entries, missing_tasks = results["tasks"], results["missing_tasks"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ApmError(f"{path}: not a results file of stage 7 ({e}); rerun stage 7") from None
        table.cells[system] = entries
        table.missing_tasks[system] = list(missing_tasks)
        for task in [*entries, *missing_tasks]:
            if tasks is None and task not in table.tasks:
                table.tasks.append(task)
        table.open_set |= {task for task, r in entries.items() if r["open_set"]}
    return table


def _stat(values: list[float | None], decimals: int) -> str:
    if any(v is None for v in values):
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return f"{np.mean(values):.{decimals}f} ± {np.std(values, ddof=1):.{decimals}f}"


def render_results_table(
    rows: Sequence[str],
    tasks: Sequence[str],
    cells: Mapping[str, Mapping[str, Sequence[Mapping]]],
    open_set: set[str],
    metrics: Sequence[tuple[str, int]] = (("cavg", 4), ("eer", 2)),
) -> str:
    """Markdown table; a cell joins `metrics` (key, decimals) with " / " over its results.

    A cell with several results shows mean ± sample std; an absent or empty one `missing`;
    a metric a result lacks (e.g. Cllr without calibration) `n/a`.
    Open-set task columns are labelled "(open-set)".
    """
    head = [f"{t} (open-set)" if t in open_set else t for t in tasks]
    lines = ["| system | " + " | ".join(head) + " |", "|---" * (len(tasks) + 1) + "|"]
    for row in rows:
        out = []
        for task in tasks:
            results = cells.get(row, {}).get(task) or []
            out.append(
                " / ".join(_stat([r.get(k) for r in results], d) for k, d in metrics)
                if results
                else MISSING
            )
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def render_results_md(table: ResultsTable, provenance: str = "") -> str:
    """RESULTS.md: (where it came from,) the Cavg / EER% table, the exact min Cavg table and
    what is missing."""
    rows = [s for s in table.systems if s in table.cells]
    cells = table.cell_lists()
    out = [
        "# Results",
        "",
        *([provenance, ""] if provenance else []),
        "Cells: Cavg / EER %. Cavg as the OLR challenge script computes it (21 thresholds "
        "between the lowest and highest trial score, P_target 0.5, 4 decimals); EER over all "
        "trials pooled. Open-set tasks count the utterances of languages outside the "
        "training set as one more non-target class. Per-system details: "
        "`exp/<system>/results.md`.",
        "",
        render_results_table(rows, table.tasks, cells, table.open_set),
        "Exact minimum Cavg over all thresholds / identification accuracy % (known languages):",
        "",
        render_results_table(
            rows, table.tasks, cells, table.open_set, (("min_cavg", 4), ("accuracy", 2))
        ),
    ]
    if any(r.get("cllr") is not None for s in rows for r in table.cells[s].values()):
        out += [
            "Calibrated (multiclass logistic-regression calibration on the dev sets, "
            "`scores/calibrated/`): Cllr / min Cllr (multiclass, bits; log2 of the number of "
            "languages is uninformative) / actual Cavg (Bayes decisions) / min Cavg of the "
            "calibrated scores. The tables above are of the uncalibrated scores.",
            "",
            render_results_table(
                rows,
                table.tasks,
                cells,
                table.open_set,
                (("cllr", 3), ("min_cllr", 3), ("actual_cavg", 4), ("calibrated_min_cavg", 4)),
            ),  # fmt: skip
        ]
    fewer = [
        f"- {s}: {task} scored on {r['n_utts']} of {r['n_utts_total']} utterances"
        for s in rows
        for task, r in table.cells[s].items()
        if r.get("n_utts_total") is not None and r["n_utts"] < r["n_utts_total"]
    ]
    if fewer:
        out += ["Scored on fewer utterances than the task has (skipped with --skip-bad true):",
                "", *fewer, ""]  # fmt: skip
    notes = [f"- {s}: {why}" for s, why in table.missing.items()]
    notes += [
        f"- {s}: not scored for {', '.join(tasks)}"
        for s, tasks in table.missing_tasks.items()
        if tasks
    ]
    if notes:
        out += ["Missing:", "", *notes, ""]
    return "\n".join(out)
