"""utils/recipe.sh's locks: one recipe run at a time per --exp and per written --data."""

import os
import signal
import subprocess
import textwrap
import time


def _holder(tmp_path, repo_root, mode: str, directory, name: str = "h.sh"):
    """A background bash that takes the lock (as run.sh does) and sleeps; returns the Popen."""
    script = tmp_path / name
    script.write_text(
        textwrap.dedent(
            f"""\
            set -euo pipefail
            . {repo_root}/utils/recipe.sh
            command_line="egs/olr/run.sh --exp {directory} (holder)"
            recipe_lock {mode} {directory}
            echo locked > {tmp_path}/{name}.ready
            exec sleep 60
            """
        )
    )
    p = subprocess.Popen(["bash", str(script)], start_new_session=True)
    for _ in range(100):
        if (tmp_path / f"{name}.ready").exists():
            return p
        time.sleep(0.05)
    p.kill()
    raise AssertionError("the holder did not get the lock")


def _try(tmp_path, repo_root, mode: str, directory):
    body = f". {repo_root}/utils/recipe.sh; command_line=second; recipe_lock {mode} {directory}"
    return subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=30)


def test_second_run_into_the_same_exp_is_refused_and_names_the_holder(tmp_path, repo_root):
    exp = tmp_path / "exp"
    holder = _holder(tmp_path, repo_root, "exclusive", exp)
    try:
        r = _try(tmp_path, repo_root, "exclusive", exp)
        assert r.returncode == 1
        assert f"PID {holder.pid}" in r.stderr and "(holder)" in r.stderr, r.stderr
        assert "--exp DIR" in r.stderr and "Wait" in r.stderr
        assert _try(tmp_path, repo_root, "shared", exp).returncode == 1, "a reader waits too"
        assert _try(tmp_path, repo_root, "exclusive", tmp_path / "other").returncode == 0
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    # kill -9 releases it: the next run goes on, removes the dead holder's note, and on its
    # exit its own: the directory holds only the empty lock file
    assert (exp / f".lock.{holder.pid}").is_file()
    assert _try(tmp_path, repo_root, "exclusive", exp).returncode == 0
    assert sorted(p.name for p in exp.iterdir()) == [".lock"]
    assert (exp / ".lock").read_bytes() == b""


def test_readers_of_data_share_it_and_a_writer_is_refused(tmp_path, repo_root):
    data = tmp_path / "data"
    a = _holder(tmp_path, repo_root, "shared", data, "a.sh")
    b = _holder(tmp_path, repo_root, "shared", data, "b.sh")
    try:
        r = _try(tmp_path, repo_root, "exclusive", data)
        assert r.returncode == 1
        assert f"PID {a.pid}" in r.stderr and f"PID {b.pid}" in r.stderr, r.stderr
    finally:
        for p in (a, b):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_run_sh_refuses_an_exp_in_use(tmp_path, repo_root, shell_env):
    exp = tmp_path / "exp"
    holder = _holder(tmp_path, repo_root, "exclusive", exp)
    try:
        cmd = [str(repo_root / "egs/olr/run.sh"), "--stage", "7", "--exp", str(exp),
               "--data", str(tmp_path / "data"), "--systems", "none"]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=shell_env, timeout=120)
        assert r.returncode == 1 and f"PID {holder.pid}" in r.stderr, r.stderr
        assert "stage 7" not in r.stdout, "nothing ran"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_force_clears_the_mini_olr_stamp(tmp_path, repo_root, shell_env):
    stamp = tmp_path / "data/mini_olr/.stamp"
    stamp.parent.mkdir(parents=True)
    for force, survives in (("false", True), ("true", False)):
        stamp.write_text("{}")
        # an unknown size makes stage 0 fail at once, after the stamp was (or was not) cleared
        cmd = [str(repo_root / "egs/olr/run.sh"), "--stop-stage", "0", "--force", force,
               "--corpus-size", "bogus", "--data", str(tmp_path / "data"),
               "--exp", str(tmp_path / "exp")]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=shell_env, timeout=120)
        assert r.returncode == 1 and "stage 0 (make_mini_olr) failed" in r.stderr, r.stderr
        assert stamp.exists() == survives, force


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path, repo_root, shell_env):
    from apm.utils.io import TEMP_NAME, atomic_path, remove_stale_temps

    exp = tmp_path / "exp"
    (exp / "am/log").mkdir(parents=True)
    stale = [exp / "..done.ab12cd_z.tmp", exp / "am/.det.png.k3j4h5g6.tmp"]
    for path in stale:
        path.write_text("half")
    (exp / "am/.feats.store.q1w2e3r4.tmp").mkdir()  # an atomic_dir's
    keep = [exp / "am/notes.tmp", exp / "am/.hidden", exp / "am/log/x.log"]
    for path in keep:
        path.write_text("mine")
    with atomic_path(tmp_path / "model.txt") as tmp:  # the pattern is the writer's own names
        assert TEMP_NAME.match(tmp.name), tmp.name
    assert remove_stale_temps(exp) == 3
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert not (exp / "am/.feats.store.q1w2e3r4.tmp").exists()
    # the recipe does it when it starts, under its lock
    stale[0].write_text("half")
    (exp / ".done").mkdir()
    (exp / ".done/stage4.train_am.tmp").write_text("half")
    cmd = [str(repo_root / "egs/olr/run.sh"), "--stage", "7", "--exp", str(exp),
           "--data", str(tmp_path / "data"), "--systems", ""]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=shell_env, timeout=120)
    assert "removed 1 temporary file(s) left by a killed run" in r.stdout, r.stdout + r.stderr
    assert not stale[0].exists() and not (exp / ".done/stage4.train_am.tmp").exists()
