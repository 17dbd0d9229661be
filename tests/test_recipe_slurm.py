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
from conftest import REPO, TINY_SYSTEMS

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


@pytest.fixture
def slurm_run(slurm, tiny_recipe, tmp_path):
    """The shared tiny recipe (conftest.py) redone on Slurm at the same paths, so that paths
    inside the outputs agree: the local run is moved to tmp_path/local meanwhile, and moved
    back afterwards (the Slurm run's outputs removed). Yields (recipe, local root)."""
    parts = ("data", "exp", "RESULTS.md")
    local = tmp_path / "local"
    local.mkdir()
    for part in parts:
        (tiny_recipe.root / part).rename(local / part)
    try:
        yield tiny_recipe, local
    finally:
        for part in parts:
            path = tiny_recipe.root / part
            if path.is_dir():
                shutil.rmtree(path)
            path.unlink(missing_ok=True)
            (local / part).rename(path)


@pytest.mark.slow
def test_recipe_on_slurm_matches_local(slurm, slurm_run):
    recipe, local = slurm_run
    data, exp, cwd = recipe.data, recipe.exp, recipe.root
    r = _run([*recipe.cmd, "--stop-stage", "0"], cwd, slurm)  # the corpus again, locally
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = _run([*recipe.cmd, "--stage", "1"], cwd, slurm, APM_CMD_BACKEND="slurm")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # the same data (manifests, features, alignments) and the same system and scores
    assert _files(data) == _files(local / "data")
    for system in TINY_SYSTEMS:
        for part in ("final.pt", "xvectors", "scores", "languages.txt"):
            path, ref = exp / system / part, local / "exp" / system / part
            if path.is_dir():
                assert _files(path) == _files(ref) and _files(path), (system, part)
            else:
                assert path.read_bytes() == ref.read_bytes(), (system, part)

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
    assert not list((local / "exp/log").rglob("q/*.sh")), "local runs submit nothing"

    # A task that fails fails the step, named by number with its log (task_short's one
    # feature job is dispatcher job 1's), and Slurm saw it fail.
    shutil.rmtree(data / "fbank/task_short")
    wav = Path((data / "task_short/wav.scp").read_text().split()[1])
    good = wav.read_bytes()
    wav.write_bytes(b"not a wav file")
    r = _run([*recipe.cmd, "--stage", "2", "--stop-stage", "2", "--force", "true"], cwd, slurm,
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
