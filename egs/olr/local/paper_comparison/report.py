"""The paper comparison's report: RESULTS.md and verdicts.json from the trained systems' score
files (it reads files, never runs models).

Inference (apm.metrics.bootstrap, apm.metrics.inference): every contrast is paired across
systems seed by seed and over the same hierarchical test-set draws (speakers within language,
then utterances within speaker), its interval is a t interval from the seed and test-set
variance components, and the pre-registered primary family (conf/claims.yaml) gets Holm-
adjusted verdicts. An A/A check (disjoint halves of one system's seeds, compared as if two
systems) measures the intervals' real coverage; the report prints it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from apm.data.trials import read_trials
from apm.features.readers import read_scp
from apm.metrics.bootstrap import Clusters, HierarchicalDraws, SeedMetrics
from apm.metrics.inference import Contrast, Coverage, aa_coverage, holm
from apm.metrics.scorefile import read_scores
from apm.metrics.trialscores import TrialScores, align_trials
from apm.report.table import render_results_table
from apm.utils import ApmError, read_kv

from .plan import (
    LABEL_SOURCES,
    Claims,
    ContrastSpec,
    eval_rows,
    kind_rows,
    read_results,
    system_dir,
)

log = logging.getLogger(__name__)

AA_MIN = 200  # A/A comparisons at least
COVERAGE_OK = 0.93  # the intervals are trusted only at this A/A coverage or above


@dataclass
class PaperReport:
    out: Path
    data: Path
    seeds: list[str]
    choices: dict  # choices.yaml
    tasks: list[str]  # the recipe's test tasks reported
    claims: Claims
    exploratory: bool = False
    n_boot: int = 1000
    margin_plot: str | None = None  # file name under out, if drawn
    margin_plot_system: str | None = None
    # condition (a key of CONDITIONS) -> the test task holding it
    conditions: dict[str, str] = field(default_factory=dict)

    def spec_tasks(self, spec: ContrastSpec) -> list[str]:
        named = [self.conditions[c] for c in spec.conditions if c in self.conditions]
        return [t for t in named if t in self.tasks]


class ScoreCache:
    """Per-seed Cavg of each (source, system, task) under the task's shared draws, read once."""

    def __init__(self, report: PaperReport) -> None:
        self.report = report
        self.draws: dict[tuple[str, str], HierarchicalDraws] = {}
        self.seed_draws: dict[tuple[str, str], np.ndarray] = {}
        self.values: dict[tuple[str, str, str], SeedMetrics] = {}
        self.trials: dict[str, list] = {}  # task -> its trials, read once

    def _scores(self, source: str, system: str, task: str) -> tuple[list[TrialScores], bool]:
        trials_path = self.report.data / task / "trials"
        if task not in self.trials:
            self.trials[task] = read_trials(trials_path)
        trials = self.trials[task]
        out, open_set = [], False
        for seed in self.report.seeds:
            sdir = system_dir(self.report.out, source, seed, system)
            res = read_results(sdir / "results.json")["tasks"]
            if task not in res:
                raise ApmError(f"{sdir}: task {task} not scored")
            open_set = bool(res[task]["open_set"])
            out.append(align_trials(trials, read_scores(sdir / "scores" / f"{task}.score"),
                                    trials_path))  # fmt: skip
        return out, open_set

    def _draws(self, source: str, task: str, ts: TrialScores) -> HierarchicalDraws:
        key = (source, task)
        if key not in self.draws:
            utt2spk = read_kv(self.report.data / task / "utt2spk")
            clusters = Clusters.of(ts.utts, ts.utt_cls, utt2spk)
            self.draws[key] = HierarchicalDraws(clusters, self.report.n_boot, seed=len(self.draws))
            rng = np.random.default_rng(1000 + len(self.draws))
            s = len(self.report.seeds)
            self.seed_draws[key] = rng.integers(s, size=(self.report.n_boot, s))
        return self.draws[key]

    def metric(self, source: str, system: str, task: str) -> SeedMetrics:
        key = (source, system, task)
        if key not in self.values:
            per_seed, open_set = self._scores(source, system, task)
            draws = self._draws(source, task, per_seed[0])
            self.values[key] = draws.seed_metrics(per_seed, "cavg", open_set)
        return self.values[key]

    def contrast(self, source: str, task: str, terms: Mapping[str, float]) -> Contrast:
        """`terms`: system -> coefficient."""
        diff = SeedMetrics.combine([(c, self.metric(source, s, task)) for s, c in terms.items()])
        return Contrast.of(diff, self.seed_draws[(source, task)])


@dataclass
class Test:
    """One contrast on one task of one margin form and label source."""

    spec: ContrastSpec
    source: str
    kind: str
    task: str
    terms: str  # as shown: "A − B" with the systems' labels
    contrast: Contrast
    holm_p: float | None = None  # primary only
    alpha: float = 0.05

    @property
    def verdict(self) -> str | None:
        """Primary only: supported / contradicted (by the estimate's sign) when the Holm-
        adjusted p is at most alpha, otherwise not resolved."""
        if self.holm_p is None:
            return None
        if self.holm_p > self.alpha:
            return "not resolved"
        return (
            "supported"
            if (self.contrast.estimate < 0) == (self.spec.expected < 0)
            else "contradicted"
        )

    def record(self) -> dict:
        c = self.contrast
        low, high = c.interval()
        return {"id": self.spec.id, "claim": self.spec.text, "source": self.source,
                "kind": self.kind, "task": self.task, "terms": self.terms,
                "estimate": c.estimate, "low": low, "high": high, "half_width": c.half_width,
                "p": c.p_value, "holm_p": self.holm_p, "verdict": self.verdict,
                "mdd80": c.mdd(), "n_seeds": c.n_seeds, "var_seed": c.var_seed,
                "var_speaker": c.var_speaker, "var_utterance": c.var_utterance,
                "percentile": list(c.percentile)}  # fmt: skip


def _term_label(terms: Mapping[str, float], roles: Mapping) -> str:
    parts = []
    for role, coef in terms.items():
        sign = "+" if coef > 0 else "−"
        mag = "" if abs(coef) == 1 else f"{abs(coef):g}·"
        parts.append(f"{sign} {mag}{roles[role].label}")
    return " ".join(parts).removeprefix("+ ")


def run_tests(report: PaperReport, cache: ScoreCache, specs: Sequence[ContrastSpec],
              source: str) -> tuple[list[Test], list[str]]:  # fmt: skip
    """Every spec on every task it names, per margin form; and the untested ones."""
    tests, untested = [], []
    for kind, choice in report.choices["sources"][source].items():
        roles = kind_rows(kind, choice, report.claims.did)
        for spec in specs:
            systems: dict[str, float] = {}
            for role, coef in spec.terms.items():
                systems[roles[role].system] = systems.get(roles[role].system, 0.0) + coef
            systems = {s: c for s, c in systems.items() if c != 0}
            tasks = report.spec_tasks(spec)
            if not tasks or not systems:
                why = ("no reported test task holds the " + " / ".join(spec.conditions)
                       + " condition") if not tasks else "its roles are one system here"  # fmt: skip
                untested.append(f"- {kind.upper()}: {spec.text} ({why})")
                continue
            label = _term_label(spec.terms, roles)
            for task in tasks:
                tests.append(Test(spec, source, kind, task, label,
                                  cache.contrast(source, task, systems)))  # fmt: skip
    return tests, untested


def _f(x: float, d: int = 4) -> str:
    return f"{x + 0.0:+.{d}f}".replace("-0.0000", "+0.0000")


def primary_table(tests: Sequence[Test], target: float) -> str:
    lines = ["| contrast | margin form | task | ΔCavg [95% CI] | p | Holm p | verdict | "
             f"MDD (80%) | seeds for MDD {target:g} | variance: seed / speaker / utterance |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in tests:
        c = t.contrast
        low, high = c.interval()
        need = c.seeds_for(target)
        total = c.se() ** 2 or 1.0
        split = " / ".join(f"{100 * v / total:.0f}%" for v in
                           (c.var_seed / c.n_seeds, c.var_speaker, c.var_utterance))  # fmt: skip
        lines.append(
            f"| {t.spec.id}: {t.terms} | {t.kind.upper()} | {t.task.removeprefix('task_')} | "
            f"{_f(c.estimate)} [{_f(low)}, {_f(high)}] | {c.p_value:.3f} | {t.holm_p:.3f} | "
            f"**{t.verdict}** | {c.mdd():.4f} | {need if need else 'unreachable'} | {split} |"
        )
    return "\n".join(lines) + "\n"


def exploratory_table(tests: Sequence[Test]) -> str:
    lines = ["| contrast | margin form | task | ΔCavg [95% CI] | p (unadjusted) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for t in tests:
        c = t.contrast
        low, high = c.interval()
        lines.append(f"| {t.spec.id}: {t.terms} | {t.kind.upper()} | "
                     f"{t.task.removeprefix('task_')} | {_f(c.estimate)} [{_f(low)}, {_f(high)}] "
                     f"| {c.p_value:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def reading(tests: Sequence[Test], coverage: Coverage | None, claims: Claims) -> str:
    """The written reading, generated from the verdicts, the A/A check and the power."""
    lines = []
    if coverage is not None:
        ok = coverage.t_interval >= COVERAGE_OK
        lines.append(f"- **Calibration:** in {coverage.n} A/A comparisons ({coverage.seeds_per_arm} "
                     f"vs {coverage.seeds_per_arm} seeds of one system), the 95% intervals "
                     f"contained 0 in {100 * coverage.t_interval:.1f}% "
                     f"({'acceptable' if ok else 'NOT acceptable'}: the bar is "
                     f"{100 * COVERAGE_OK:.0f}%); a joint percentile bootstrap would have in "
                     f"{100 * coverage.percentile:.1f}%.")  # fmt: skip
    else:
        lines.append("- **Calibration:** not checked (the A/A check needs at least 4 seeds).")
    by: dict[tuple[str, str], list[Test]] = {}
    for t in tests:
        by.setdefault((t.spec.id, t.kind), []).append(t)
    for (_, kind), ts in by.items():
        counts = {v: [t.task.removeprefix("task_") for t in ts if t.verdict == v]
                  for v in ("supported", "contradicted", "not resolved")}  # fmt: skip
        parts = [f"{v} on {', '.join(x)}" for v, x in counts.items() if x]
        mdds = [t.contrast.mdd() for t in ts]
        lines.append(f"- **{kind.upper()}: {ts[0].spec.text}**: {'; '.join(parts)} (Holm over "
                     f"the whole primary family). With these seeds the run detects, with "
                     f"{100 * claims.power:.0f}% power, differences of "
                     f"{min(mdds):.4f}-{max(mdds):.4f} Cavg and larger.")  # fmt: skip
    needs = [t.contrast.seeds_for(claims.target_difference) for t in tests]
    reachable = [n for n in needs if n]
    worst_test = max(t.contrast.var_test for t in tests) if tests else 0.0
    unreachable = len(needs) - len(reachable)
    text = (f"- **Power:** detecting a {claims.target_difference:g} Cavg difference with "
            f"{100 * claims.power:.0f}% power")  # fmt: skip
    if reachable:
        text += (f" would need {min(reachable)}-{max(reachable)} seeds for {len(reachable)} of "
                 f"the {len(tests)} primary tests")  # fmt: skip
    if unreachable:
        text += ("; " if reachable else ": ") + (
            f"for {unreachable} of the {len(tests)} primary tests no number of seeds reaches "
            f"it: the test set alone (speakers, utterances; SE up to {math.sqrt(worst_test):.4f}) "
            "keeps the MDD above it, so more test speakers would help, more seeds would not"
        )
    lines.append(text + ". These are unadjusted; under Holm the first test of the family runs "
                 f"at level {claims.alpha:g}/{len(tests)}, so the family needs somewhat more.")  # fmt: skip
    return "\n".join(lines) + "\n"


def choices_md(choices: Mapping) -> str:
    seeds = choices["select_seeds"]
    lines = [f"Chosen on the dev sets ({', '.join(choices['dev_tasks'])}) only, with selection "
             f"seeds {' '.join(seeds)} that no evaluation uses: each family (K, APM-K) takes "
             "the grid margin with the lowest dev Cavg averaged over the dev sets and the "
             "selection seeds (equal tries for both); a choice at the edge of its grid grew "
             "the grid. Cells: mean ± seed-to-seed std of dev Cavg; `per seed`: what each "
             "selection seed alone would have chosen.", ""]  # fmt: skip
    for src, per_kind in choices["sources"].items():
        for kind, c in per_kind.items():
            for fam, fc in c["families"].items():
                cells = ", ".join(f"{n.rsplit('_m', 1)[1]}: {v['mean']:.4f} ± {v['std']:.4f}"
                                  for n, v in fc["dev"].items())  # fmt: skip
                agree = sum(m == fc["margin"] for m in fc["per_seed"].values())
                edge = f" — **at the {fc['edge']} edge of the grid**" if fc["edge"] else ""
                lines.append(f"- {LABEL_SOURCES.get(src, src)}, {fam.upper().replace('_', '-')}: "
                             f"m={fc['margin']:g}{edge}; per seed "
                             f"{' '.join(f'{m:g}' for m in fc['per_seed'].values())} "
                             f"({agree} of {len(seeds)} agree); {cells}")  # fmt: skip
            lines.append(f"- {LABEL_SOURCES.get(src, src)}, APM-{kind.upper()} m={c['apm']:g}: "
                         f"measured mean margin {c['apm_mean_margin']:g}")  # fmt: skip
    return "\n".join(lines) + "\n"


def _aa(report: PaperReport, cache: ScoreCache) -> Coverage | None:
    if len(report.seeds) < 4:
        return None
    systems = [cache.metric(src, row.system, task)
               for src in report.choices["sources"]
               for row in eval_rows(src, report.choices, report.claims.did, report.exploratory)
               for task in report.tasks]  # fmt: skip
    splits = max(1, -(-AA_MIN // len(systems)))
    return aa_coverage(systems, splits, np.random.default_rng(7))


def render_paper_md(report: PaperReport, provenance: str = "") -> tuple[str, dict]:
    """(RESULTS.md text, verdicts.json content)."""
    out = ["# Paper comparison on this corpus", ""]
    if provenance:
        out += [provenance, ""]
    out += [
        f"Evaluation seeds: {' '.join(report.seeds)}. Every comparison is made within one label "
        "source. Cells: Cavg / EER % (mean ± sample std over the seeds). Contrasts are paired "
        "seed by seed and over the same test-set draws: a hierarchical bootstrap "
        f"({report.n_boot} draws: each language's speakers, then each drawn speaker's "
        "utterances) gives the test-set variance, the seeds' spread the seed variance; the 95% "
        "interval is a t interval on both (Welch-Satterthwaite df). Verdicts are given only to "
        "the pre-registered primary contrasts (`conf/claims.yaml`), with Holm-Bonferroni "
        f"over the whole family at α = {report.claims.alpha:g}: supported or contradicted when "
        "the Holm-adjusted p is at most α, otherwise not resolved. MDD: the difference found "
        f"with {100 * report.claims.power:.0f}% power at α (unadjusted).",
        "",
        "## Choices made on dev",
        "",
        choices_md(report.choices),
    ]
    cache = ScoreCache(report)
    primary: list[Test] = []
    explore: list[Test] = []
    untested: list[str] = []
    complete = True
    for src in report.choices["sources"]:
        rows = eval_rows(src, report.choices, report.claims.did, report.exploratory)
        cells, open_set, missing = gather(report.out, src, report.seeds, rows)
        short = {t: t.removeprefix("task_") for t in report.tasks}
        renamed = {lbl: {short[t]: v for t, v in c.items() if t in short}
                   for lbl, c in cells.items()}  # fmt: skip
        out += [f"## {LABEL_SOURCES.get(src, src)} labels", "",
                render_results_table([r.label for r in rows], list(short.values()), renamed,
                                     {short[t] for t in open_set if t in short})]  # fmt: skip
        if missing:
            complete = False
            out += ["Missing (no contrasts computed):", ""]
            out += [f"- {label}: {', '.join(paths)}" for label, paths in missing.items()] + [""]
            continue
        p, u = run_tests(report, cache, report.claims.primary, src)
        available = [s for s in report.claims.exploratory
                     if report.exploratory or not ({"apm_norm", "constant_at_apm"} & set(s.terms))]  # fmt: skip
        e, u2 = run_tests(report, cache, available, src)
        primary += p
        explore += e
        untested += u + u2
    coverage = _aa(report, cache) if complete else None
    if primary:
        adjusted = holm([t.contrast.p_value for t in primary])
        for t, a in zip(primary, adjusted, strict=True):
            t.holm_p, t.alpha = float(a), report.claims.alpha
        out += ["## A/A calibration", "", aa_md(coverage), "",
                "## Primary contrasts (pre-registered, Holm-adjusted)", "",
                primary_table(primary, report.claims.target_difference), "",
                "Variance: each component's share of the contrast's squared standard error "
                "(seed: between-seed / S; speaker and utterance: the test-set draws). "
                "`unreachable`: the test-set variance alone keeps the MDD above the target.", "",
                "## Exploratory contrasts (intervals only, no verdicts)", "",
                exploratory_table(explore) if explore else "None computed.\n", "",
                "## Reading (generated from the numbers above)", "",
                reading(primary, coverage, report.claims)]  # fmt: skip
    if untested:
        log.warning("%d contrast(s) not tested: %s", len(untested), "; ".join(untested))
        out += ["Not tested here:", "", *untested, ""]
    if report.margin_plot:
        out += ["## APM margin distribution", "",
                f"Margins m * c_i of {report.margin_plot_system} (seed {report.seeds[0]}) on "
                "every test utterance, c_i the mean max phone posterior of the trained phone "
                "branch over the utterance's voiced frames, per language and test condition:",
                "", f"![APM margins]({report.margin_plot})", ""]  # fmt: skip
    verdicts = {"coverage": vars(coverage) if coverage else None,
                "primary": [t.record() for t in primary],
                "exploratory": [t.record() for t in explore]}  # fmt: skip
    return "\n".join(out), verdicts


def aa_md(coverage: Coverage | None) -> str:
    if coverage is None:
        return "Not run: the A/A check needs at least 4 evaluation seeds (2 per arm)."
    ok = coverage.t_interval >= COVERAGE_OK
    return (f"{coverage.n} A/A comparisons: every evaluated system on every test task, its "
            f"seeds split at random into two disjoint halves of {coverage.seeds_per_arm}, "
            "compared as if two systems (the true difference is 0). Coverage of the 95% "
            f"intervals: **{100 * coverage.t_interval:.1f}%** with the t interval used here "
            f"({'acceptable' if ok else 'NOT acceptable'}, the bar is {100 * COVERAGE_OK:.0f}%); "
            f"{100 * coverage.percentile:.1f}% with a joint percentile bootstrap (seeds and "
            "test set resampled), shown for comparison.")  # fmt: skip


def gather(out: Path, source: str, seeds: Sequence[str], rows: Sequence
           ) -> tuple[dict, set, dict]:  # fmt: skip
    """(cells label -> task -> [results entry per seed], open-set tasks, label -> missing)."""
    cells: dict[str, dict[str, list[dict]]] = {}
    open_set: set[str] = set()
    missing: dict[str, list[str]] = {}
    for row in rows:
        cells[row.label] = {}
        for seed in seeds:
            path = system_dir(out, source, seed, row.system) / "results.json"
            if not path.is_file():
                missing.setdefault(row.label, []).append(str(path))
                continue
            for task, entry in read_results(path)["tasks"].items():
                cells[row.label].setdefault(task, []).append(entry)
                open_set |= {task} if entry["open_set"] else set()
    return cells, open_set, missing


def margin_distribution(
    sdir: str | os.PathLike, data_dir: str | os.PathLike, tasks: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """{task: {language: margins m * c_i of its utterances}} of a trained APM system.

    c_i is what extraction wrote (`xvectors/<task>/confidence.scp`: as in training,
    max_posterior, not normalised, averaged over the extraction chunks of a long utterance);
    m is the system's `loss.margin` (`config.yaml`). Utterances outside the task's
    `utt2lang` are left out.
    """
    sdir = Path(sdir)
    config = sdir / "config.yaml"
    if not config.is_file():
        raise ApmError(f"{config}: not found; train the system first (stage 4)")
    margin = float(yaml.safe_load(config.read_text(encoding="utf-8"))["loss"]["margin"])
    out: dict[str, dict[str, np.ndarray]] = {}
    for task in tasks:
        scp = sdir / "xvectors" / task / "confidence.scp"
        if not scp.is_file() and (sdir / "xvectors" / task / "xvector.scp").is_file():
            raise ApmError(f"{scp}: not found; the system has no phone branch, so no APM margin "
                           "(or it was extracted by an older version: rerun stage 5)")  # fmt: skip
        confidence = read_scp(scp, "phonetic confidence (stage 5)")
        utt2lang = read_kv(Path(data_dir) / task / "utt2lang")
        per_lang: dict[str, list[float]] = {}
        for utt, c in confidence.items():
            if utt in utt2lang:
                per_lang.setdefault(utt2lang[utt], []).append(margin * float(np.asarray(c)[0]))
        out[task] = {lang: np.array(v) for lang, v in sorted(per_lang.items())}
    return out
