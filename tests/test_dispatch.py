"""utils/dispatch.sh (apm.utils.dispatch): Kaldi's `$cmd JOB=1:N log command` convention,
the local backend, the sbatch/qsub command lines, the torchrun launcher under Slurm, and the
steps' job split (stage 1 probing jobs merge to the same manifests as one process)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from apm.utils.dispatch import (
    Spec,
    expand_hostlist,
    parse_args,
    qsub_command,
    sbatch_command,
    split,
    torchrun_command,
)
from apm.utils.errors import ApmError

DISPATCH = str(REPO / "utils/dispatch.sh")


def _dispatch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([DISPATCH, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_parse_range_options_and_substitution(tmp_path):
    backend, spec = parse_args(["slurm", "--mem", "4G", "--num-threads", "2", "JOB=1:3",
                                "log/x.JOB.log", "prog", "--job", "JOB", "ali.JOB.ark", "JOBS"])  # fmt: skip
    assert backend == "slurm" and (spec.var, spec.first, spec.last) == ("JOB", 1, 3)
    assert spec.mem == "4G" and spec.num_threads == 2 and spec.name == "x"
    assert spec.shell_command(2) == "prog --job 2 ali.2.ark JOBS"  # whole words only
    assert spec.log_path(3) == Path(spec.cwd, "log/x.3.log")
    _, one = parse_args(["local", "log/train.log", "echo a b"])  # one word: a shell line
    assert one.var is None and one.tasks == [1] and one.shell_command(1) == "echo a b"
    _, quoted = parse_args(["local", "l.log", "echo", "a b"])  # several words: quoted
    assert quoted.shell_command(1) == "echo 'a b'"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pbs", "l.log", "true"], "unknown job backend 'pbs'"),
        (["local", "JOB=1-4", "l.JOB.log", "true"], "malformed job range 'JOB=1-4'"),
        (["local", "JOB=0:2", "l.JOB.log", "true"], "malformed job range 'JOB=0:2'"),
        (["local", "JOB=3:2", "l.JOB.log", "true"], "malformed job range"),
        (["local", "JOB=1:2", "l.log", "true"], "does not contain JOB"),
        (["local", "--mem"], "needs a value"),
        (["local", "--num-threads", "two", "l.log", "true"], "whole number"),
        (["local", "--queue", "x", "l.log", "true"], "unknown option --queue"),
        (["local", "l.log"], "expected a log file and a command"),
    ],
)
def test_bad_command_lines_are_clear_errors(argv, message):
    with pytest.raises(ApmError, match=message):
        parse_args(argv)


def test_cli_reports_an_unknown_backend_without_traceback(tmp_path):
    r = _dispatch("pbs", "JOB=1:2", "l.JOB.log", "true", cwd=tmp_path)
    assert r.returncode == 1 and "unknown job backend 'pbs'" in r.stderr
    assert "Traceback" not in r.stderr


def test_local_runs_every_task_and_names_the_failed_ones(tmp_path):
    r = _dispatch("local", "JOB=1:4", "log/t.JOB.log", "echo task JOB; [ JOB != 3 ]", cwd=tmp_path)
    assert r.returncode == 1
    assert (
        "1 of 4 jobs failed" in r.stderr
        and f"JOB=3: exit code 1; log: {tmp_path}/log/t.3.log" in r.stderr
    )
    for task in range(1, 5):  # all ran, each in its own log, framed
        lines = (tmp_path / f"log/t.{task}.log").read_text().splitlines()
        assert lines[0] == f"# echo task {task}; [ {task} != 3 ]" and f"task {task}" in lines
        assert lines[-1].startswith(f"# Ended (code {int(task == 3)})")
    r = _dispatch("local", "log/one.log", "echo alone", cwd=tmp_path)  # one task: console too
    assert r.returncode == 0 and "alone" in r.stderr
    assert "alone" in (tmp_path / "log/one.log").read_text()


def test_local_limits_jobs_at_once(tmp_path):
    # each task records how many run at the same time (a marker file per running task)
    script = "touch run/JOB; ls run | wc -l > n/JOB; sleep 0.3; rm run/JOB"
    (tmp_path / "run").mkdir()
    (tmp_path / "n").mkdir()
    r = _dispatch("local", "--max-jobs-run", "2", "JOB=1:5", "log/t.JOB.log", script, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    counts = [int((tmp_path / f"n/{t}").read_text()) for t in range(1, 6)]
    assert max(counts) <= 2


def test_sbatch_and_qsub_command_lines(tmp_path):
    _, spec = parse_args(["slurm", "--mem", "4G", "--num-threads", "4", "--gpu", "2", "--time",
                          "1:00:00", "--max-jobs-run", "3", "--queue-opts", "--partition=gpu",
                          "JOB=1:8", f"{tmp_path}/log/fbank.JOB.log", "true"])  # fmt: skip
    cmd = sbatch_command(spec, tmp_path / "q.sh")
    assert cmd[:3] == ["sbatch", "--wait", "--parsable"]
    for opt in ("--array=1-8%3", "--cpus-per-task=4", "--mem=4G", "--gres=gpu:2",
                "--time=1:00:00", "--partition=gpu", f"--output={tmp_path}/log/q/fbank.%a.out"):  # fmt: skip
        assert opt in cmd
    assert cmd[-1] == str(tmp_path / "q.sh")
    q = qsub_command(spec, tmp_path / "q.sh")
    assert q[:3] == ["qsub", "-sync", "y"] and "-t" in q and q[q.index("-t") + 1] == "1-8"
    assert ["-pe", "smp", "4"] == q[q.index("-pe") : q.index("-pe") + 3]
    assert "mem_free=4G,ram_free=4G" in q and "gpu=2" in q and "h_rt=1:00:00" in q
    _, single = parse_args(["slurm", "--num-nodes", "2", f"{tmp_path}/train.log", "true"])
    cmd = sbatch_command(single, tmp_path / "q.sh")
    assert "--nodes=2" in cmd and not any(c.startswith("--array") for c in cmd)


def test_scheduler_backend_without_its_tool_is_a_clear_error(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no sbatch/qsub there in CI
    if any(Path(d, t).exists() for d in ("/usr/bin", "/bin") for t in ("qsub",)):
        pytest.skip("qsub is installed here")
    r = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "apm.utils.dispatch", "sge",
                        "l.log", "true"], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1 and "qsub not found" in r.stderr


def test_hostlist_and_torchrun_under_slurm():
    assert expand_hostlist("node[01-03,7],gpu5") == ["node01", "node02", "node03", "node7", "gpu5"]
    assert expand_hostlist("a[9-11]") == ["a9", "a10", "a11"]
    alone = torchrun_command(4, {})
    assert alone[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in alone
    env = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    cmd = torchrun_command(4, env)
    assert cmd[:5] == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
    ]
    for opt in ("--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d",
                "--rdzv_endpoint=gpu07:21234", "--rdzv_id=1234"):  # fmt: skip
        assert opt in cmd
    assert cmd[-1] == "-m"
    with pytest.raises(ApmError, match="SLURM_JOB_NODELIST"):
        torchrun_command(1, {"SLURM_JOB_ID": "1"})


def test_split_is_contiguous_and_complete():
    parts = split(list(range(7)), 3)
    assert parts == [[0, 1], [2, 3, 4], [5, 6]] and split([1], 4) == [[1]]


def test_spec_names_and_queue_dir(tmp_path):
    spec = Spec(
        log="exp/log/2/fbank.JOB.log", command=["true"], var="JOB", last=2, cwd=str(tmp_path)
    )
    assert spec.name == "fbank" and spec.queue_dir == tmp_path / "exp/log/2/q"
    assert spec.rc_path(2) == tmp_path / "exp/log/2/q/fbank.2.rc"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
def test_steps_split_into_jobs_give_the_one_process_bytes(tmp_path):
    """Stages 1-2 as --nj 3 jobs through the local dispatcher (steps/*.sh, as run.sh runs
    them) write the same files as one process with --nj 3 workers (no --cmd); a failed job
    is named with its log, and the rerun redoes only what is missing."""
    from apm.data.toy import make_toy_corpus

    tmp_path = make_toy_corpus(tmp_path / "olr", {"train": 2, "test": 1}, seconds=(0.8, 1.2))
    (tmp_path / "fbank.yaml").write_text("fbank:\n  num_mel_bins: 40\ncuts_per_job: 5\n")
    env = dict(os.environ, PATH=f"{REPO / '.venv/bin'}:{REPO / 'utils'}:{os.environ['PATH']}",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # fmt: skip
    sets = ["train", "test"]

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    def stages(split: bool) -> None:
        if split:  # the steps: jobs through --cmd, then the merge
            for step, args in (("make_manifests.sh", [".", "m"]), ("make_fbank.sh", ["m", "f"])):
                r = run(str(REPO / "steps" / step), "--nj", "3", "--cmd", "dispatch.sh local",
                        "--log-dir", "log", *(["--config", "fbank.yaml"] if "fbank" in step else []),
                        *args, *sets)  # fmt: skip
                assert r.returncode == 0, r.stdout + r.stderr
        else:  # one process, its own worker pool
            py = str(REPO / ".venv/bin/python")
            for r in (run(py, "-m", "apm.bin.make_manifests", "--nj", "3", ".", "m", *sets),
                      run(py, "-m", "apm.bin.make_fbank", "--nj", "3", "--config", "fbank.yaml",
                          "m", "f", *sets)):  # fmt: skip
                assert r.returncode == 0, r.stdout + r.stderr

    stages(split=False)
    one = {"m": _tree(tmp_path / "m"), "f": _tree(tmp_path / "f")}
    shutil.rmtree(tmp_path / "m")
    shutil.rmtree(tmp_path / "f")
    stages(split=True)
    assert {"m": _tree(tmp_path / "m"), "f": _tree(tmp_path / "f")} == one
    assert len(list((tmp_path / "log").glob("fbank.*.log"))) == 3
    assert "opened" in (tmp_path / "log/manifests.2.log").read_text()

    # a broken recording fails the feature job that holds it: named, with its log
    shutil.rmtree(tmp_path / "f/test")
    wav = tmp_path / (tmp_path / "test/wav.scp").read_text().split()[1]
    good = wav.read_bytes()
    wav.write_bytes(b"broken")
    r = run(str(REPO / "steps/make_fbank.sh"), "--nj", "3", "--cmd", "dispatch.sh local",
            "--log-dir", "log", "--config", "fbank.yaml", "m", "f", *sets)  # fmt: skip
    assert r.returncode != 0 and "JOB=1: exit code 1; log: " in r.stderr, r.stderr
    assert "cannot load audio" in (tmp_path / "log/fbank.1.log").read_text()
    wav.write_bytes(good)
    r = run(str(REPO / "steps/make_fbank.sh"), "--nj", "3", "--cmd", "dispatch.sh local",
            "--log-dir", "log", "--config", "fbank.yaml", "m", "f", *sets)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _tree(tmp_path / "f") == one["f"]


def test_recipe_refuses_an_unknown_backend_before_any_stage(tmp_path):
    env = dict(os.environ, APM_CMD_BACKEND="pbs")
    r = subprocess.run([str(REPO / "egs/olr/run.sh"), "--stop-stage", "0", "--exp", str(tmp_path / "e")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and "unknown job backend 'pbs'" in r.stderr
    assert not (tmp_path / "e").exists()
