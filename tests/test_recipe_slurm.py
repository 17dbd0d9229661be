"""The recipe on a real single-node Slurm (utils/slurm_local.sh starts it): stages 1-7 of the
tiny corpus with cmd.sh's slurm backend give the same outputs as the local backend, the jobs
really ran as Slurm array jobs, and failed or cancelled tasks fail the step by number.

Slurm needs root (and apt-get the first time); where it cannot be started the tests are
skipped with the reason, shown as a warning too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SYSTEM = "apm_am"
SLURM = str(REPO / "utils/slurm_local.sh")
DISPATCH = str(REPO / "utils/dispatch.sh")
# outputs that hold timings (CPU seconds of the decoder), not results
TIMED = re.compile(r"(^|/)(report\.(json|md)|ali\.\d+\.json)$")


def _skip(reason: str) -> None:
    warnings.warn(f"Slurm tests skipped: {reason}", stacklevel=2)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running local Slurm (installed if missing, started, checked); yields the
    environment that points clients at it, and stops the daemons afterwards."""
    if os.geteuid() != 0:
        _skip("running Slurm's daemons needs root")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, APM_SLURM_DIR=str(state), SLURM_CONF=str(state / "slurm.conf"))
    for action in ("install", "start", "check"):
        r = subprocess.run([SLURM, action], env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            subprocess.run([SLURM, "stop"], env=env, capture_output=True, timeout=60)
            _skip(f"utils/slurm_local.sh {action} failed: {(r.stdout + r.stderr).strip()[-800:]}")
    yield env
    subprocess.run([SLURM, "stop"], env=env, capture_output=True, timeout=60)


def _run(cmd: list[str], cwd: Path, env: dict, **extra: str) -> subprocess.CompletedProcess:
    env = dict(env, PATH=f"{REPO / '.venv/bin'}:{env['PATH']}", OMP_NUM_THREADS="1", **extra)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not TIMED.search(str(p.relative_to(root)))
    }


def _tiny_conf(dest: Path) -> None:
    dest.mkdir()
    cfg = yaml.safe_load((REPO / "egs/olr/conf" / f"{SYSTEM}.yaml").read_text())
    cfg["model"].update(channels=32, stats_channels=64, embed_dim=32, phone_channels=32)
    cfg["train"].update(epochs=1, batch_size=16, chunk_min_frames=80, chunk_max_frames=120)
    cfg["train"].update(min_utt_frames=40, average_last=1, bn_recalibration_batches=5)
    (dest / f"{SYSTEM}.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
def test_recipe_on_slurm_matches_local(slurm, tmp_path):
    _tiny_conf(tmp_path / "conf")
    data, exp = tmp_path / "data", tmp_path / "exp"
    recipe = [str(REPO / "egs/olr/run.sh"), "--corpus-size", "tiny", "--data", str(data),
              "--exp", str(exp), "--system-conf-dir", str(tmp_path / "conf"),
              "--systems", SYSTEM, "--test-sets", "task_short", "--dev-sets", ""]  # fmt: skip
    r = _run([*recipe, "--stop-stage", "0"], tmp_path, slurm)  # stage 0 once, for both runs
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    shutil.copytree(data, tmp_path / "data0", symlinks=True)

    # the local reference: stages 1-6 (the scores are compared; 7 is the report)
    r = _run(
        [*recipe, "--stage", "1", "--stop-stage", "6"], tmp_path, slurm, APM_CMD_BACKEND="local"
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data.rename(tmp_path / "local_data")
    exp.rename(tmp_path / "local_exp")
    (tmp_path / "data0").rename(data)  # the same paths: paths inside the outputs agree

    r = _run([*recipe, "--stage", "1"], tmp_path, slurm, APM_CMD_BACKEND="slurm")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # the same data (manifests, features, alignments) and the same system and scores
    assert _files(data) == _files(tmp_path / "local_data")
    for part in ("final.pt", "xvectors", "scores", "languages.txt"):
        path, local = exp / SYSTEM / part, tmp_path / "local_exp" / SYSTEM / part
        if path.is_dir():
            assert _files(path) == _files(local) and _files(path), part
        else:
            assert path.read_bytes() == local.read_bytes(), part

    # every job ran as a task of a Slurm (array) job: its log says which, and Slurm's job
    # completion log has it as COMPLETED
    completed = (Path(slurm["APM_SLURM_DIR"]) / "jobcomp.txt").read_text()
    logs = [exp / "log/1/manifests.1.log", exp / "log/1/manifests.2.log",
            exp / "log/2/fbank.2.log", exp / "log/3/align.1.log",
            exp / f"log/4/train_{SYSTEM}.log", exp / f"log/5/{SYSTEM}/extract.log"]  # fmt: skip
    for log in logs:
        head = log.read_text().splitlines()[1]
        m = re.search(r"Slurm job (\d+)(?:_(\d+))?", head)
        assert m, f"{log}: {head}"
        if m.group(2):
            entry = f"JobState=COMPLETED .*ArrayJobId={m.group(1)} ArrayTaskId={m.group(2)} "
        else:
            entry = f"JobId={m.group(1)} .*JobState=COMPLETED"
        assert re.search(entry, completed), (log, entry)
    assert not list((tmp_path / "local_exp/log").rglob("q/*.sh")), "local runs submit nothing"

    # A task that fails fails the step, named by number with its log (task_short's one
    # feature job is dispatcher job 1's), and Slurm saw it fail.
    shutil.rmtree(data / "fbank/task_short")
    wav = Path((data / "task_short/wav.scp").read_text().split()[1])
    good = wav.read_bytes()
    wav.write_bytes(b"not a wav file")
    r = _run([*recipe, "--stage", "2", "--stop-stage", "2", "--force", "true"], tmp_path, slurm,
             APM_CMD_BACKEND="slurm")  # fmt: skip
    assert r.returncode != 0 and "stage 2 (fbank) failed" in r.stderr, r.stderr[-3000:]
    assert f"JOB=1: exit code 1; log: {exp}/log/2/fbank.1.log" in r.stderr + r.stdout
    assert "cannot load audio" in (exp / "log/2/fbank.1.log").read_text()
    assert re.search(
        r"Name=fbank JobState=FAILED .*ArrayTaskId=1 ",
        (Path(slurm["APM_SLURM_DIR"]) / "jobcomp.txt").read_text(),
    )
    wav.write_bytes(good)  # (the rerun after a fix: tests/test_dispatch.py, local backend)


@pytest.mark.slow
def test_cancelled_task_fails_the_call_and_keeps_the_others(slurm, tmp_path):
    env = dict(slurm, PATH=f"{REPO / '.venv/bin'}:{slurm['PATH']}")
    call = subprocess.Popen(
        [DISPATCH, "slurm", "JOB=1:2", "log/t.JOB.log", "echo out JOB > out.JOB; [ JOB = 1 ] || sleep 120"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = tmp_path / "log/t.2.log"
    deadline = time.time() + 60
    while not (log.is_file() and "Slurm job" in log.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    job = re.search(r"Slurm job (\d+)_2", log.read_text()).group(1)
    subprocess.run(["scancel", f"{job}_2"], env=env, check=True, timeout=30)
    _, err = call.communicate(timeout=120)
    assert call.returncode == 1 and "1 of 2 jobs failed" in err, err
    assert "JOB=2: " in err and f"log: {log}" in err
    assert "Received signal 15" in log.read_text() or "did not finish" in err
    assert (tmp_path / "out.1").read_text() == "out 1\n", "the finished task's output is kept"


@pytest.mark.slow
def test_srun_torchrun_rendezvous_from_the_allocation(slurm, tmp_path):
    """What steps/train_xvector.sh starts inside a Slurm job with --ngpu 2: `srun torchrun`
    from `python -m apm.utils.dispatch torchrun`; the two processes meet (gloo on CPU)."""
    (tmp_path / "rankprint.py").write_text(
        "import torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "open(f'rank{dist.get_rank()}', 'w').write(f'of {dist.get_world_size()}')\n"
        "dist.destroy_process_group()\n"
    )
    env = dict(slurm, PATH=f"{REPO / '.venv/bin'}:{slurm['PATH']}",
               PYTHONPATH=f"{REPO}:{tmp_path}", OMP_NUM_THREADS="1")  # fmt: skip
    line = "launcher=$(python -m apm.utils.dispatch torchrun --nproc-per-node 2) && $launcher rankprint"
    r = subprocess.run([DISPATCH, "slurm", "--num-threads", "2", "log/ddp.log", line],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    log = (tmp_path / "log/ddp.log").read_text()
    assert r.returncode == 0, r.stderr + log
    assert "Slurm job" in log
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["of 2", "of 2"]
