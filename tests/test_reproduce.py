"""egs/olr/local/reproduce_tables.sh and paper_comparison: grid, growth, dev choice on
selection seeds, jobs, pre-registered contrasts, Holm verdicts, A/A check, power.
The sets and conditions are the OLR recipe's (egs/olr/local/mini_olr/tasks.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mini_olr.tasks import CONDITIONS, DEV_SETS, TEST_SETS
from paper_comparison import plan
from paper_comparison.report import PaperReport, margin_distribution, render_paper_md

from apm.data.trials import Trial, write_trials
from apm.metrics.scorefile import write_matrix
from apm.report.plots import plot_margins
from apm.utils import ApmError, write_kv

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "egs/olr/conf"
CLAIMS = CONF / "claims.yaml"
SCRIPT = ROOT / "egs/olr/local/reproduce_tables.sh"
MARGINS = [0.1, 0.2]
LANGS = ["a", "b", "c"]
SELECT = ["101", "102", "103"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_margin_configs_change_only_the_loss(tmp_path):
    grid = plan.write_grid(tmp_path, ["pocketsphinx"], ["am", "aam"], MARGINS, CONF)
    assert grid == {"pocketsphinx": {f: MARGINS for f in ("am", "apm_am", "aam", "apm_aam")}}
    jobs = plan.selection_jobs(grid, SELECT)
    assert len(jobs) == 3 * 8 and jobs[0].line() == "pocketsphinx 101 am_m0.1"
    base = load(CONF / "apm_aam.yaml")
    cfg = load(tmp_path / "conf/apm_aam_m0.2.yaml")
    assert cfg["loss"]["margin"] == 0.2
    cfg["loss"]["margin"] = base["loss"]["margin"]
    assert cfg == base
    name = plan.write_margin_config(CONF, tmp_path, "apm_am", 0.3, norm=True)
    cfg = load(tmp_path / f"{name}.yaml")
    assert name == "apm_am_norm_m0.3" and cfg["loss"]["confidence_norm"] is True
    with pytest.raises(ApmError, match="needs an APM loss"):
        plan.write_margin_config(CONF, tmp_path, "am", 0.3, norm=True)
    with pytest.raises(ApmError, match="no loss.margin"):
        plan.write_margin_config(CONF, tmp_path, "softmax", 0.1)


def test_selection_seeds_are_never_evaluation_seeds():
    with pytest.raises(ApmError, match="both selection and evaluation seeds"):
        plan.check_seeds(["1", "2", "101"], SELECT)
    with pytest.raises(ApmError, match="at least 2 selection seeds"):
        plan.check_seeds(["1", "2"], ["101"])
    plan.check_seeds(["1", "2"], SELECT)


def fake_system(out: Path, seed: str, system: str, dev: float, mean_margin: float = 0.05) -> Path:
    """results.json with dev Cavg `dev`, and a train log whose margins average `mean_margin`
    after the warm-up (the warm-up epoch logs a different value that must not count)."""
    sdir = plan.system_dir(out, "pocketsphinx", seed, system)
    sdir.mkdir(parents=True, exist_ok=True)
    tasks = {t: {"open_set": False, "cavg": dev, "eer": 10.0} for t in DEV_SETS}
    (sdir / "results.json").write_text(json.dumps({"system": system, "tasks": tasks}))
    (sdir / "config.yaml").write_text(yaml.safe_dump({"loss": {"margin_warmup_epochs": 1}}))
    logs = [{"epoch": e, "train": {"margin": {"a": m, "b": m}}}
            for e, m in ((1, 9.0), (2, mean_margin), (3, mean_margin))]  # fmt: skip
    (sdir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    return sdir


def dev_curve(out: Path, family: str, margins, f, seeds=SELECT, noise=0.0, mean_margin=0.05):
    rng = np.random.default_rng(0)
    for m in margins:
        for s in seeds:
            fake_system(out, s, plan.system_name(family, m), f(m) + noise * rng.normal(),
                        mean_margin)  # fmt: skip


def test_margins_are_chosen_on_the_mean_of_the_selection_seeds(tmp_path):
    grid = plan.write_grid(tmp_path, ["pocketsphinx"], ["am"], [0.1, 0.2, 0.3], CONF)
    # AM: interior minimum at 0.2; APM-AM: a tie between 0.1 and 0.2 takes the smaller
    dev_curve(tmp_path, "am", grid["pocketsphinx"]["am"], lambda m: abs(m - 0.2), noise=0.01)
    dev_curve(tmp_path, "apm_am", [0.1, 0.2], lambda m: 0.1, mean_margin=0.047)
    dev_curve(tmp_path, "apm_am", [0.3], lambda m: 0.2)
    choices = plan.choose_margins(tmp_path, SELECT, DEV_SETS, ["am"])
    am = choices["sources"]["pocketsphinx"]["am"]
    assert (am["constant"], am["apm"], am["apm_mean_margin"]) == (0.2, 0.1, 0.047)
    fam = am["families"]["am"]
    assert fam["edge"] is None and set(fam["per_seed"]) == set(SELECT)
    assert fam["dev"]["am_m0.2"]["std"] > 0  # the seed-to-seed spread is reported
    assert am["families"]["apm_am"]["edge"] == "bottom"
    with pytest.raises(ApmError, match="no dev tasks given"):
        plan.choose_margins(tmp_path, SELECT, [], ["am"])


def test_the_grid_grows_until_the_choice_is_interior(tmp_path):
    grid0 = [0.1, 0.2, 0.3]
    plan.write_grid(tmp_path, ["pocketsphinx"], ["am"], grid0, CONF)
    best = {"am": 0.42, "apm_am": 0.2}  # AM's optimum beyond the grid, APM-AM's inside
    f = {fam: (lambda m, b=b: abs(m - b)) for fam, b in best.items()}
    for fam in best:
        dev_curve(tmp_path, fam, grid0, f[fam])
    jobs = plan.grow_grid(tmp_path, SELECT, DEV_SETS, CONF, 2, grid0)
    assert sorted({j.system for j in jobs}) == ["am_m0.4"] and len(jobs) == 3
    assert (tmp_path / "conf/am_m0.4.yaml").is_file()
    dev_curve(tmp_path, "am", [0.4], f["am"])
    jobs = plan.grow_grid(tmp_path, SELECT, DEV_SETS, CONF, 2, grid0)
    assert {j.system for j in jobs} == {"am_m0.5"}
    dev_curve(tmp_path, "am", [0.5], f["am"])
    assert plan.grow_grid(tmp_path, SELECT, DEV_SETS, CONF, 2, grid0) == []  # 0.4 is interior
    am = plan.choose_margins(tmp_path, SELECT, DEV_SETS, ["am"])["sources"]["pocketsphinx"]["am"]
    assert am["constant"] == 0.4 and am["families"]["am"]["edge"] is None
    assert load(tmp_path / "grid.yaml")["pocketsphinx"]["am"] == [0.1, 0.2, 0.3, 0.4, 0.5]
    # at the growth limit a choice at the edge stays there, and the choice says so
    fake = tmp_path / "limit"
    plan.write_grid(fake, ["pocketsphinx"], ["am"], grid0, CONF)
    for fam in best:
        dev_curve(fake, fam, grid0, lambda m: -m)
    assert plan.grow_grid(fake, SELECT, DEV_SETS, CONF, 0, grid0) == []
    am = plan.choose_margins(fake, SELECT, DEV_SETS, ["am"])["sources"]["pocketsphinx"]["am"]
    assert am["families"]["am"]["edge"] == "top"


def test_evaluation_systems_are_the_primary_roles(tmp_path):
    claims = plan.load_claims(CLAIMS)
    choice = {"constant": 0.3, "apm": 0.2, "apm_mean_margin": 0.09}
    choices = {"sources": {"pocketsphinx": {"am": choice}}}
    rows = plan.eval_rows("pocketsphinx", choices, claims.did, exploratory=False)
    systems = [r.system for r in rows]
    assert systems == ["am_m0.3", "apm_am_m0.2", "am_m0.09", "am_m0.1", "apm_am_m0.3",
                       "apm_am_m0.1"]  # fmt: skip
    full = [r.system for r in plan.eval_rows("pocketsphinx", choices, claims.did, True)]
    assert full[:2] == ["single_task_softmax", "softmax"] and "apm_am_norm_m0.2" in full
    assert "am_m0.2" in full and len(full) == len(set(full))
    jobs = plan.evaluation_jobs(["1", "2"], choices, claims.did, False)
    assert len(jobs) == 2 * len(rows) and jobs[0].line() == "pocketsphinx 1 am_m0.3"
    plan.write_eval_configs(CONF, tmp_path, choices, claims.did, exploratory=True)
    assert load(tmp_path / "am_m0.09.yaml")["loss"]["margin"] == 0.09
    assert load(tmp_path / "apm_am_norm_m0.2.yaml")["loss"]["confidence_norm"] is True
    assert {r.system for r in rows} <= {p.stem for p in tmp_path.glob("*.yaml")}


def test_claims_file_is_checked(tmp_path):
    claims = plan.load_claims(CLAIMS)
    assert [s.id for s in claims.primary] == ["apm_vs_best", "apm_vs_mean", "open_did"]
    assert claims.primary[2].terms == {"constant_large": 1, "constant_small": -1,
                                       "apm_large": -1, "apm_small": 1}  # fmt: skip
    raw = load(CLAIMS)
    raw["primary"][0]["terms"] = {"apm": 1, "softmax": -1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ApmError, match="unknown role"):
        plan.load_claims(tmp_path / "c.yaml")
    raw["primary"][0]["terms"] = {"apm": 1, "best_constant": -2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ApmError, match="sum to 0"):
        plan.load_claims(tmp_path / "c.yaml")


def make_scored_run(out: Path, data: Path, seeds, better: dict[str, float], did) -> dict:
    """Every evaluation system with score files on shared trials (4 speakers per language);
    system s's target scores are raised by better.get(s, 0) (it separates the languages
    better), each seed's by its own small offset."""
    rng = np.random.default_rng(0)
    choice = {"constant": 0.2, "apm": 0.2, "apm_mean_margin": 0.09}
    fams = {f: {"margin": 0.2, "edge": None, "per_seed": {s: 0.2 for s in SELECT},
                "dev": {f"{f}_m0.2": {"mean": 0.1, "std": 0.01}}} for f in ("am", "apm_am")}  # fmt: skip
    choices = {"select_seeds": SELECT, "dev_tasks": list(DEV_SETS),
               "sources": {"pocketsphinx": {"am": {**choice, "families": fams}}}}  # fmt: skip
    utts = [f"u{i:03d}" for i in range(120)]
    truth = {u: LANGS[i % 3] for i, u in enumerate(utts)}
    for task in TEST_SETS:
        write_trials(data / task / "trials",
                     [Trial(g, u, truth[u] == g) for u in utts for g in LANGS])  # fmt: skip
        write_kv(data / task / "utt2spk", {u: f"{truth[u]}_s{i % 4}" for i, u in enumerate(utts)})
    for row in plan.eval_rows("pocketsphinx", choices, did, False):
        for seed in seeds:
            sdir = plan.system_dir(out, "pocketsphinx", seed, row.system)
            (sdir / "scores").mkdir(parents=True)
            tasks = {}
            lift = 1.0 + better.get(row.system, 0.0) + 0.1 * rng.normal()
            for task in TEST_SETS:
                target = np.array([[truth[u] == g for g in LANGS] for u in utts])
                m = rng.normal(size=target.shape) + lift * target
                write_matrix(sdir / "scores" / f"{task}.score", LANGS, utts, m)
                tasks[task] = {"open_set": False, "cavg": 0.1, "eer": 10.0}
            (sdir / "results.json").write_text(json.dumps({"system": row.system, "tasks": tasks}))
    return choices


def test_report_primary_contrasts_with_holm_aa_and_power(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    claims = plan.load_claims(CLAIMS)
    seeds = ["1", "2", "3", "4"]
    # APM-AM at its chosen margin (0.2) planted clearly better than every constant margin
    choices = make_scored_run(out, data, seeds, {"apm_am_m0.2": 1.5}, claims.did)
    report = PaperReport(out, data, seeds, choices, list(TEST_SETS), claims, n_boot=100,
                         conditions=CONDITIONS)  # fmt: skip
    md, verdicts = render_paper_md(report, "Generated by `test` at commit x.")
    assert md.startswith("# Paper comparison") and "Generated by `test`" in md
    for section in ("## Choices made on dev", "## A/A calibration", "## Primary contrasts",
                    "## Exploratory contrasts", "## Reading"):  # fmt: skip
        assert section in md
    primary = verdicts["primary"]
    # the family: apm_vs_best and apm_vs_mean on short, cross, open; the DiD on open
    assert sorted((r["id"], r["task"]) for r in primary) == sorted(
        [(i, t) for i in ("apm_vs_best", "apm_vs_mean") for t in ("task_short", "task_cross",
                                                                   "task_open")]
        + [("open_did", "task_open")])  # fmt: skip
    by = {(r["id"], r["task"]): r for r in primary}
    for t in ("task_short", "task_cross", "task_open"):
        r = by[("apm_vs_best", t)]
        assert r["verdict"] == "supported" and r["high"] < 0 and r["holm_p"] >= r["p"]
    assert by[("open_did", "task_open")]["verdict"] in ("not resolved", "supported", "contradicted")
    assert all(r["mdd80"] > 0 for r in primary)
    # exploratory: intervals, never verdicts
    assert verdicts["exploratory"] and all(r["verdict"] is None for r in verdicts["exploratory"])
    assert "norm_vs_nominal" not in {r["id"] for r in verdicts["exploratory"]}  # not evaluated
    cov = verdicts["coverage"]
    assert cov["n"] >= 200 and cov["seeds_per_arm"] == 2 and 0 <= cov["t_interval"] <= 1
    assert "A/A comparisons" in md and "**Power:**" in md
    json.dumps(verdicts)


def test_contrasts_on_conditions_without_a_task_are_listed_as_not_tested(tmp_path):
    """A recipe with no cross-channel or open-set task: those contrasts say so; with fewer
    than 4 seeds the A/A check says it did not run."""
    out, data = tmp_path / "out", tmp_path / "data"
    claims = plan.load_claims(CLAIMS)
    choices = make_scored_run(out, data, ["1", "2"], {}, claims.did)
    report = PaperReport(out, data, ["1", "2"], choices, ["task_full", "task_short"], claims,
                         n_boot=50, conditions={"short": "task_short", "full": "task_full"})  # fmt: skip
    md, verdicts = render_paper_md(report)
    assert {r["task"] for r in verdicts["primary"]} == {"task_short"}
    assert "open_did" not in {r["id"] for r in verdicts["primary"]}
    assert "no reported test task holds the open condition" in md
    assert verdicts["coverage"] is None and "needs at least 4" in md


@pytest.fixture
def cli(monkeypatch, capsys):
    """`python -m paper_comparison ARGS` in this process (no interpreter and torch import per
    call): returns (exit status, stdout, stderr); the root logger is restored afterwards."""
    from paper_comparison.__main__ import build_parser, run

    from apm.bin.cli import main

    handlers, level = logging.root.handlers[:], logging.root.level

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["paper_comparison", *args])
        try:
            main(build_parser(), run)
            code = 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    yield call
    logging.root.handlers[:], logging.root.level = handlers, level


def test_cli_configs_grow_select_report(tmp_path, cli):
    cmd = ["--conf-dir", str(CONF), "--margins", "0.1 0.2", "--seeds", "1 2",
           "--select-seeds", "101 102", "--dev-tasks", " ".join(DEV_SETS), "--kinds", "am"]  # fmt: skip
    code, out, _ = cli(*cmd, "configs", str(tmp_path))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 8 and lines[0] == "pocketsphinx 101 am_m0.1"
    for line in lines:
        m = float(line.split()[2].rsplit("_m", 1)[1])
        fake_system(tmp_path, line.split()[1], line.split()[2], 0.2 - m)  # best at the top
    code, out, _ = cli(*cmd, "grow", str(tmp_path))
    assert code == 0 and sorted(out.splitlines()) == [
        f"pocketsphinx {s} {f}_m0.3" for s in ("101", "102") for f in ("am", "apm_am")
    ]
    assert cli(*cmd, "--grid-growth", "0", "grow", str(tmp_path))[:2] == (0, "")
    code, _, err = cli(*cmd, "--seeds", "1 101", "select", str(tmp_path))
    assert code == 1 and "both selection and evaluation seeds" in err
    code, _, err = cli(*cmd, "--sources", "kaldi", "configs", str(tmp_path))
    assert code != 0 and "unknown label source" in err


def test_cli_needs_the_recipes_sets(tmp_path, cli):
    cmd = ["--conf-dir", str(CONF)]
    code, _, err = cli(*cmd, "select", str(tmp_path))
    assert code == 1 and "select needs --dev-tasks" in err
    code, _, err = cli(*cmd, "--data", "d", "report", str(tmp_path))
    assert code == 1 and "--test-sets (the recipe's test tasks)" in err
    code, _, err = cli(*cmd, "--data", "d", "--test-sets", "a b", "--conditions",
                       "short=a open=c", "report", str(tmp_path))  # fmt: skip
    assert code == 1 and "--conditions open=c: not among --test-sets (a b)" in err
    code, _, err = cli(*cmd, "--conditions", "long=a short", "report", str(tmp_path))
    assert code == 2 and "CONDITION=TASK pairs" in err and "'long=a short'" in err


def test_script_help():
    done = subprocess.run([str(SCRIPT), "--help"],
                          capture_output=True, text=True, cwd="/")  # fmt: skip
    text = done.stdout + done.stderr
    for option in ("--corpus-size", "--seeds", "--margins", "--jobs", "--sources", "--quick"):
        assert option in text


def test_margin_distribution_of_a_trained_system(tmp_path):
    from apm.extract.xvectors import ExtractJob, run_extraction
    from apm.features.readers import read_cuts
    from apm.train.config import resolve_config
    from apm.train.job import TrainJob, run_training
    from apm.train.toy import make_toy_corpus, toy_config

    toy = make_toy_corpus(tmp_path / "toy", num_langs=2, utts_per_lang=4)
    cfg = resolve_config(toy_config(epochs=1), "toy", seed=1)
    run_training(TrainJob(cfg, toy.fbank_dir, tmp_path / "exp", toy.ali_dir))
    data = tmp_path / "data"
    (data / "fbank").mkdir(parents=True)
    (data / "fbank/task_full").symlink_to(toy.fbank_dir)
    with pytest.raises(ApmError, match="confidence.scp"):  # the report reads, never runs, models
        margin_distribution(tmp_path / "exp", data, ["task_full"])
    run_extraction(ExtractJob(tmp_path / "exp", toy.fbank_dir, tmp_path / "exp/xvectors/task_full"))
    # one utterance without a language (not in the task) is left out
    utts = sorted(c.id for c in read_cuts(toy.fbank_dir))
    write_kv(data / "task_full/utt2lang", {u: u.split("_")[0] for u in utts[1:]})
    dist = margin_distribution(tmp_path / "exp", data, ["task_full"])
    assert list(dist) == ["task_full"] and list(dist["task_full"]) == ["l0", "l1"]
    assert [len(v) for v in dist["task_full"].values()] == [3, 4]
    values = np.concatenate(list(dist["task_full"].values()))
    # m * c_i with c_i a mean max posterior: within (m / num_phones, m]
    assert np.all(values > 0.2 / 12) and np.all(values <= 0.2 + 1e-6)
    plot_margins(dist, tmp_path / "margins.png", "toy")
    assert (tmp_path / "margins.png").read_bytes()[:4] == b"\x89PNG"


def test_paper_network_configs(tmp_path):
    from apm.train.config import load_system_config

    paper_conf = CONF / "paper"
    assert sorted(p.stem for p in paper_conf.glob("*.yaml")) == sorted(
        p.stem for p in CONF.glob("*.yaml") if p.stem not in ("align", "backend", "claims", "fbank")
    )
    for path in paper_conf.glob("*.yaml"):
        cfg = load_system_config(path)
        model = cfg["model"]
        sizes = {"etdnn": (512, 1500, 512), "ecapa_tdnn": (512, 1536, 192),
                 "resnet34": (32, 1280, 256)}[model["trunk"]]  # fmt: skip
        assert (model["channels"], model["stats_channels"], model["embed_dim"]) == sizes
        assert cfg["train"]["epochs"] == 40
        assert cfg["loss"] == load_system_config(CONF / path.name)["loss"]
        if cfg["model"]["phone_branch"]:
            assert cfg["model"]["phone_hidden_layers"] == 3
    plan.write_grid(tmp_path, ["pocketsphinx"], ["am", "aam"], [0.1, 0.2], paper_conf)
    assert len(list((tmp_path / "conf").glob("*.yaml"))) == 8


@pytest.mark.slow
def test_reproduce_quick_end_to_end(tmp_path):
    """egs/olr/local/reproduce_tables.sh --quick on tiny mini-OLR (AM only, 2-epoch configs): dev
    choice on two selection seeds, the primary systems on two evaluation seeds, Holm verdicts,
    provenance, margin plot."""
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("single_task_softmax", "softmax", "am", "apm_am"):
        cfg = load(CONF / f"{name}.yaml")
        cfg["train"].update(epochs=2, average_last=1)
        (conf / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    cmd = [str(SCRIPT), "--quick", "true", "--kinds", "am",
           "--conf-dir", str(conf), "--data", str(tmp_path / "data"), "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "selection trainings:" in done.stdout and "evaluation trainings:" in done.stdout
    md = (out / "RESULTS.md").read_text()
    assert (
        "Generated by `egs/olr/local/reproduce_tables.sh --quick true" in md and "at commit" in md
    )
    assert "## Primary contrasts" in md and "(APM's measured mean margin)" in md
    verdicts = json.loads((out / "verdicts.json").read_text())
    primary = verdicts["primary"]
    assert primary and {r["verdict"] for r in primary} <= {"supported", "contradicted",
                                                           "not resolved"}  # fmt: skip
    assert all(r["low"] <= r["estimate"] <= r["high"] for r in primary)
    assert "Not run: the A/A check needs at least 4" in md  # --quick has 2 seeds
    choice = load(out / "choices.yaml")["sources"]["pocketsphinx"]["am"]
    assert choice["constant"] in (0.1, 0.2) and 0 < choice["apm_mean_margin"] < choice["apm"]
    assert (out / "margins.png").read_bytes()[:4] == b"\x89PNG"
