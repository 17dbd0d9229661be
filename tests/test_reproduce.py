"""egs/olr/local/reproduce_tables.sh and apm.report.paper: configs, dev choice, jobs, claims.
The sets and conditions are the OLR recipe's (egs/olr/local/mini_olr/tasks.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mini_olr.tasks import CONDITIONS, DEV_SETS, TEST_SETS

from apm.data.trials import Trial, write_trials
from apm.metrics.scorefile import write_matrix
from apm.report import paper
from apm.report.plots import plot_margins
from apm.utils import ApmError, write_kv

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "egs/olr/conf"
SCRIPT = ROOT / "egs/olr/local/reproduce_tables.sh"
MARGINS = [0.1, 0.2]
LANGS = ["a", "b", "c"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_grid_configs_change_only_the_loss(tmp_path):
    names = paper.write_grid_configs(CONF, tmp_path, MARGINS)
    assert names == ["single_task_softmax", "softmax", "am_m0.1", "am_m0.2", "apm_am_m0.1",
                     "apm_am_m0.2", "aam_m0.1", "aam_m0.2", "apm_aam_m0.1", "apm_aam_m0.2"]  # fmt: skip
    assert load(tmp_path / "softmax.yaml") == load(CONF / "softmax.yaml")
    base = load(CONF / "apm_aam.yaml")
    cfg = load(tmp_path / "apm_aam_m0.2.yaml")
    assert cfg["loss"]["margin"] == 0.2
    cfg["loss"]["margin"] = base["loss"]["margin"]
    assert cfg == base
    name = paper.write_margin_config(CONF, tmp_path, "apm_am", 0.3, norm=True)
    cfg = load(tmp_path / f"{name}.yaml")
    assert name == "apm_am_norm_m0.3" and cfg["loss"]["confidence_norm"] is True
    with pytest.raises(ApmError, match="needs an APM loss"):
        paper.write_margin_config(CONF, tmp_path, "am", 0.3, norm=True)
    with pytest.raises(ApmError, match="no loss.margin"):
        paper.write_margin_config(CONF, tmp_path, "softmax", 0.1)


def fake_system(out: Path, seed: str, system: str, dev: float, mean_margin: float = 0.05) -> Path:
    """results.json with dev Cavg `dev`, and a train log whose margins average `mean_margin`
    after the warm-up (the warm-up epoch logs a different value that must not count)."""
    sdir = paper.system_dir(out, "pocketsphinx", seed, system)
    sdir.mkdir(parents=True, exist_ok=True)
    tasks = {t: {"open_set": False, "cavg": dev, "eer": 10.0} for t in DEV_SETS}
    (sdir / "results.json").write_text(json.dumps({"system": system, "tasks": tasks}))
    (sdir / "config.yaml").write_text(yaml.safe_dump({"loss": {"margin_warmup_epochs": 1}}))
    logs = [{"epoch": e, "train": {"margin": {"a": m, "b": m}}}
            for e, m in ((1, 9.0), (2, mean_margin), (3, mean_margin))]  # fmt: skip
    (sdir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    return sdir


def test_margins_are_chosen_on_dev_per_family(tmp_path):
    dev = {"am_m0.1": 0.20, "am_m0.2": 0.10, "apm_am_m0.1": 0.15, "apm_am_m0.2": 0.15,
           "aam_m0.1": 0.30, "aam_m0.2": 0.31, "apm_aam_m0.1": 0.40, "apm_aam_m0.2": 0.39}  # fmt: skip
    for system, value in dev.items():
        fake_system(tmp_path, "1", system, value, mean_margin=0.047)
    choices = paper.choose_margins(tmp_path, ["pocketsphinx"], ["1"], MARGINS, DEV_SETS)
    am, aam = choices["sources"]["pocketsphinx"]["am"], choices["sources"]["pocketsphinx"]["aam"]
    assert (am["constant"], am["apm"], am["apm_mean_margin"]) == (0.2, 0.1, 0.047)  # tie: smaller
    assert (aam["constant"], aam["apm"]) == (0.1, 0.2)
    assert am["dev_cavg"]["am_m0.2"] == 0.1
    # evaluation rows: the five roles, softmax first; a system in two roles shows once
    rows = paper.eval_rows("pocketsphinx", choices, MARGINS, full_grid=False)
    systems = [r.system for r in rows]
    assert systems[:2] == ["single_task_softmax", "softmax"]
    assert systems[2:7] == ["am_m0.2", "am_m0.1", "am_m0.047", "apm_am_m0.1", "apm_am_norm_m0.1"]
    assert len(systems) == len(set(systems))
    jobs = paper.evaluation_jobs(["1", "2"], choices, MARGINS, full_grid=False)
    assert len(jobs) == 2 * len(rows) and jobs[0].line() == "pocketsphinx 1 single_task_softmax"
    grid = paper.evaluation_jobs(["1"], choices, MARGINS, full_grid=True)
    assert {"am_m0.1", "am_m0.2", "apm_aam_m0.1", "apm_aam_m0.2"} <= {j.system for j in grid}
    paper.write_control_configs(CONF, tmp_path / "conf", choices)
    assert load(tmp_path / "conf/am_m0.047.yaml")["loss"]["margin"] == 0.047
    assert load(tmp_path / "conf/apm_am_norm_m0.1.yaml")["loss"]["confidence_norm"] is True


def test_choice_needs_dev_results(tmp_path):
    sdir = fake_system(tmp_path, "1", "am_m0.1", 0.2)
    (sdir / "results.json").write_text(json.dumps({"tasks": {}}))
    with pytest.raises(ApmError, match="dev task"):
        paper.choose_margins(tmp_path, ["pocketsphinx"], ["1"], [0.1], DEV_SETS)
    with pytest.raises(ApmError, match="no dev tasks given"):
        paper.choose_margins(tmp_path, ["pocketsphinx"], ["1"], [0.1], [])


def make_scored_run(out: Path, data: Path, seeds, better: dict[str, float]) -> dict:
    """Systems of every role with score files on shared trials; system s's target scores are
    raised by better.get(s, 0) (so it separates the languages better)."""
    rng = np.random.default_rng(0)
    choice = {"constant": 0.2, "apm": 0.2, "apm_mean_margin": 0.09, "dev_cavg": {}}
    choices = {"seeds": ["1"], "margins": MARGINS, "dev_tasks": list(DEV_SETS),
               "sources": {"pocketsphinx": {"am": choice, "aam": dict(choice)}}}  # fmt: skip
    utts = [f"u{i:03d}" for i in range(150)]
    truth = {u: LANGS[i % 3] for i, u in enumerate(utts)}
    for task in TEST_SETS:
        write_trials(data / task / "trials",
                     [Trial(g, u, truth[u] == g) for u in utts for g in LANGS])  # fmt: skip
    for row in paper.eval_rows("pocketsphinx", choices, MARGINS, False):
        for seed in seeds:
            sdir = paper.system_dir(out, "pocketsphinx", seed, row.system)
            (sdir / "scores").mkdir(parents=True)
            tasks = {}
            for task in TEST_SETS:
                target = np.array([[truth[u] == g for g in LANGS] for u in utts])
                m = rng.normal(size=target.shape) + (1.0 + better.get(row.system, 0.0)) * target
                write_matrix(sdir / "scores" / f"{task}.score", LANGS, utts, m)
                tasks[task] = {"open_set": False, "cavg": 0.1, "eer": 10.0}
            (sdir / "results.json").write_text(json.dumps({"system": row.system, "tasks": tasks}))
    return choices


def test_report_claims_with_intervals_and_verdicts(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    # APM-AM (apm_am_m0.2) planted clearly better than every constant AM margin
    choices = make_scored_run(out, data, ["1", "2", "3"], {"apm_am_m0.2": 1.5})
    report = paper.PaperReport(out, data, ["1", "2", "3"], choices, list(TEST_SETS), n_boot=200,
                               conditions=CONDITIONS)  # fmt: skip
    md, records = paper.render_paper_md(report, "Generated by `test` at commit x.")
    assert md.startswith("# Paper comparison") and "Generated by `test`" in md
    assert "## Choices made on dev" in md and "### Claims (PocketSphinx labels)" in md
    by = {(r["kind"], r["claim"], r["task"]): r for r in records}
    apm_vs_best = [
        r for k, r in by.items() if k[0] == "am" and k[1].startswith("APM beats the best")
    ]
    assert len(apm_vs_best) == len(TEST_SETS)
    assert all(r["verdict"] == "supported" and r["cavg"].high < 0 for r in apm_vs_best)
    # AAM systems are all alike: nothing resolved
    aam = [r for k, r in by.items() if k[0] == "aam"]
    assert aam and all(r["verdict"] == "not resolved" for r in aam)
    assert "**AM: APM beats the best (dev-chosen) constant margin**: supported" in md
    # the conditions the claims name are tested on the tasks holding them
    assert {k[2] for k in by if k[1] == "a larger constant margin hurts open-set"} == {"task_open"}
    assert {k[2] for k in by if k[1].endswith("helps short and cross-channel")} == {
        "task_short", "task_cross"}  # fmt: skip
    assert "Not tested" not in md
    json.dumps(paper.verdict_records(records))  # JSON-ready


def test_claims_on_conditions_without_a_task_are_listed_as_not_tested(tmp_path):
    """A recipe with no cross-channel or open-set task: those claims say so in RESULTS.md."""
    out, data = tmp_path / "out", tmp_path / "data"
    choices = make_scored_run(out, data, ["1", "2"], {})
    report = paper.PaperReport(out, data, ["1", "2"], choices, ["task_full", "task_short"],
                               n_boot=50, conditions={"short": "task_short"})  # fmt: skip
    md, records = paper.render_paper_md(report)
    assert {r["task"] for r in records} == {"task_full", "task_short"}
    assert (
        "- AM: a larger constant margin hurts open-set (no reported test task holds the open "
        "condition)" in md
    )
    assert any(r["claim"].endswith("helps short and cross-channel") for r in records)


@pytest.mark.slow  # several processes importing torch: about 15 s
def test_cli_configs_select_report(tmp_path):
    cmd = [sys.executable, "-m", "apm.bin.paper_tables", "--conf-dir", str(CONF),
           "--margins", "0.1 0.2", "--seeds", "1", "--dev-tasks", " ".join(DEV_SETS)]  # fmt: skip
    done = subprocess.run([*cmd, "configs", str(tmp_path)], capture_output=True, text=True,
                          check=True, cwd=ROOT)  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == 8 and lines[0] == "pocketsphinx 1 am_m0.1"
    for line in lines:
        fake_system(tmp_path, "1", line.split()[2], 0.1)
    done = subprocess.run([*cmd, "select", str(tmp_path)], capture_output=True, text=True,
                          check=True, cwd=ROOT)  # fmt: skip
    assert "pocketsphinx 1 apm_am_norm_m0.1" in done.stdout.splitlines()
    assert load(tmp_path / "choices.yaml")["sources"]["pocketsphinx"]["am"]["constant"] == 0.1
    bad = subprocess.run([*cmd, "--sources", "kaldi", "configs", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode != 0 and "unknown label source" in bad.stderr


@pytest.mark.slow  # several processes importing torch: about 15 s
def test_cli_needs_the_recipes_sets(tmp_path):
    cmd = [sys.executable, "-m", "apm.bin.paper_tables", "--conf-dir", str(CONF)]
    bad = subprocess.run([*cmd, "select", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "select needs --dev-tasks" in bad.stderr
    bad = subprocess.run([*cmd, "--data", "d", "report", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 1 and "--test-sets (the recipe's test tasks)" in bad.stderr
    bad = subprocess.run([*cmd, "--data", "d", "--test-sets", "a b", "--conditions",
                          "short=a open=c", "report", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 1 and "--conditions open=c: not among --test-sets (a b)" in bad.stderr
    bad = subprocess.run([*cmd, "--conditions", "long=a short", "report", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert (
        bad.returncode == 2
        and "CONDITION=TASK pairs" in bad.stderr
        and "'long=a short'" in bad.stderr
    )


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
        paper.margin_distribution(tmp_path / "exp", data, ["task_full"])
    run_extraction(ExtractJob(tmp_path / "exp", toy.fbank_dir, tmp_path / "exp/xvectors/task_full"))
    # one utterance without a language (not in the task) is left out
    utts = sorted(c.id for c in read_cuts(toy.fbank_dir))
    write_kv(data / "task_full/utt2lang", {u: u.split("_")[0] for u in utts[1:]})
    dist = paper.margin_distribution(tmp_path / "exp", data, ["task_full"])
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
        p.stem for p in CONF.glob("*.yaml") if p.stem not in ("align", "backend", "fbank")
    )
    for path in paper_conf.glob("*.yaml"):
        cfg = load_system_config(path)
        assert (cfg["model"]["channels"], cfg["model"]["stats_channels"]) == (512, 1500)
        assert cfg["model"]["embed_dim"] == 512 and cfg["train"]["epochs"] == 40
        assert cfg["loss"] == load_system_config(CONF / path.name)["loss"]
        if cfg["model"]["phone_branch"]:
            assert cfg["model"]["phone_hidden_layers"] == 3
    assert len(paper.write_grid_configs(paper_conf, tmp_path, [0.1])) == 6


@pytest.mark.slow
def test_reproduce_quick_end_to_end(tmp_path):
    """egs/olr/local/reproduce_tables.sh --quick on tiny mini-OLR (AM only, 2-epoch configs): dev
    choice, controls, two seeds, bootstrap verdicts, provenance, margin plot."""
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
    assert "### Claims (PocketSphinx labels)" in md and "(APM's measured mean margin)" in md
    records = json.loads((out / "verdicts.json").read_text())
    assert records and {r["verdict"] for r in records} <= {"supported", "contradicted",
                                                           "not resolved"}  # fmt: skip
    assert all(r["cavg"]["low"] <= r["cavg"]["high"] for r in records)
    choice = load(out / "choices.yaml")["sources"]["pocketsphinx"]["am"]
    assert choice["constant"] in (0.1, 0.2) and 0 < choice["apm_mean_margin"] < choice["apm"]
    assert (out / "margins.png").read_bytes()[:4] == b"\x89PNG"
