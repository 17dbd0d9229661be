"""apm.report and steps/report.sh: per-system results, plots, the cross-system table."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from test_backend import make_system

from apm.backend import BackendConfig, score_system
from apm.data.trials import read_trials
from apm.metrics import align_trials, challenge_cavg, read_scores
from apm.report import collect_results, render_results_md, render_results_table, report_system
from apm.utils import ApmError, read_kv, write_kv

TASKS = ["task_full", "task_open"]


@pytest.fixture
def scored(tmp_path):
    system = make_system(tmp_path)
    conf = BackendConfig(primary="lr", backends=["lr", "classifier"])
    score_system(system, tmp_path / "data", "train", TASKS, conf)
    return system


def test_report_system_outputs(tmp_path, scored):
    results = report_system(scored, tmp_path / "data", [*TASKS, "task_noisy"])
    on_disk = json.loads((scored / "results.json").read_text())
    assert on_disk == results
    assert results["backend"] == "lr" and results["missing_tasks"] == ["task_noisy"]
    full, open_ = results["tasks"]["task_full"], results["tasks"]["task_open"]
    assert not full["open_set"] and open_["open_set"] and open_["n_unknown_utts"] == 10
    # the stored Cavg is the challenge one, open-set variant for task_open
    trials = tmp_path / "data/task_open/trials"
    ts = align_trials(read_trials(trials), read_scores(scored / "scores/task_open.score"), trials)
    assert open_["cavg"] == challenge_cavg(ts, open_set=True).cavg
    assert set(full["extra_backends"]) == {"classifier"}
    assert open_["confusion"]["rows"][-1] == "unknown"
    for png in ("det.png", "confusion_task_full.png", "confusion_task_open.png"):
        assert (scored / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (scored / "results.md").read_text()
    assert "| task_open | open |" in md and "task_noisy" in md


def test_trials_and_utt2lang_disagree(tmp_path, scored):
    path = tmp_path / "data/task_full/utt2lang"
    utt2lang = read_kv(path)
    first = sorted(utt2lang)[0]
    utt2lang[first] = "xx"  # now unknown to the system but it has a target trial
    write_kv(path, utt2lang)
    with pytest.raises(ApmError, match=f"utterance {first} is 'xx' but its target trial"):
        report_system(scored, tmp_path / "data", TASKS)


def test_render_mean_std_and_missing():
    cells = {"am": {"t1": [{"cavg": 0.1, "eer": 10.0}, {"cavg": 0.2, "eer": 12.0}]}, "apm": {}}
    md = render_results_table(["am", "apm"], ["t1", "t2"], cells, {"t2"})
    lines = md.splitlines()
    assert lines[0] == "| system | t1 | t2 (open-set) |"
    assert lines[2] == "| am | 0.1500 ± 0.0707 / 11.00 ± 1.41 | missing |"
    assert lines[3] == "| apm | missing | missing |"


def test_collect_results_names_missing(tmp_path, scored):
    report_system(scored, tmp_path / "data", TASKS)
    table = collect_results(tmp_path / "exp", ["sys", "ghost"])
    assert table.tasks == TASKS and table.open_set == {"task_open"}
    assert "ghost" in table.missing and set(table.cells) == {"sys"}
    md = render_results_md(table)
    assert "| system | task_full | task_open (open-set) |" in md
    cavg, eer = (table.cells["sys"]["task_full"][k] for k in ("cavg", "eer"))
    assert f"| sys | {cavg:.4f} / {eer:.2f} |" in md
    assert "- ghost: no " in md


def test_report_step_script(tmp_path, repo_root, shell_env, scored):
    # a second system trained but not scored (with a stale results.json), and a third that
    # does not exist
    shutil.copytree(scored, tmp_path / "exp/unscored", ignore=shutil.ignore_patterns("scores"))
    (tmp_path / "exp/unscored/results.json").write_text("{}")
    cmd = [str(repo_root / "steps/report.sh"), "--data", "data", "--test-sets", " ".join(TASKS),
           "--output", "RESULTS.md", "exp", "sys", "unscored", "ghost"]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=shell_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| sys | 0." in md and "- unscored: no " in md and "- ghost: no " in md
    assert (tmp_path / "exp/sys/results.json").is_file()
    assert not (tmp_path / "exp/unscored/results.json").exists()
    cmd[-3:] = ["unscored"]
    r = subprocess.run(cmd, cwd=tmp_path, env=shell_env, capture_output=True, text=True)
    assert r.returncode == 1 and "no system among unscored has scores" in r.stderr


def test_skip_bad_drops_and_counts_unscored_utterances(tmp_path):
    system = make_system(tmp_path)
    scp = system / "xvectors/task_full/xvector.scp"
    scp.write_text("".join(scp.read_text().splitlines(keepends=True)[2:]))
    score_system(system, tmp_path / "data", "train", ["task_full"], BackendConfig(), skip_bad=True)
    with pytest.raises(ApmError, match=r"no score for 6 of 90 trials"):
        report_system(system, tmp_path / "data", ["task_full"])
    results = report_system(system, tmp_path / "data", ["task_full"], skip_bad=True)
    task = results["tasks"]["task_full"]
    assert task["n_trials_skipped"] == 6 and task["n_trials"] == 84 and task["n_utts"] == 28


def test_fewer_scored_utterances_are_shown(tmp_path, caplog):
    """A task scored on fewer utterances than it has says so in results.json, results.md and
    RESULTS.md; the skip is warned once, not once per back-end."""
    system = make_system(tmp_path)
    for name in ("xvector", "logits"):
        scp = system / f"xvectors/task_full/{name}.scp"
        scp.write_text("".join(scp.read_text().splitlines(keepends=True)[2:]))
    conf = BackendConfig(primary="lr", backends=["lr", "cosine", "classifier"])
    score_system(system, tmp_path / "data", "train", TASKS, conf, skip_bad=True)
    caplog.clear()
    with caplog.at_level("WARNING"):
        results = report_system(system, tmp_path / "data", TASKS, skip_bad=True)
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    full, open_ = results["tasks"]["task_full"], results["tasks"]["task_open"]
    assert (full["n_utts"], full["n_utts_total"]) == (28, 30)
    assert (open_["n_utts"], open_["n_utts_total"]) == (40, 40)
    saved = json.loads((system / "results.json").read_text())
    assert saved["tasks"]["task_full"]["n_utts_total"] == 30
    md = (system / "results.md").read_text()
    assert "Note: task_full scored on 28 of 30 utterances" in md and "task_open scored" not in md
    table = render_results_md(collect_results(tmp_path / "exp", ["sys"]))
    assert "- sys: task_full scored on 28 of 30 utterances" in table
    assert "task_open scored" not in table
