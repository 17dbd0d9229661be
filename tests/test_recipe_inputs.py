"""egs/olr/run.sh with a real-data layout: relative paths given on the command line are the
caller's, stage 0 notices a corrected release, and stage ranges and --nj are checked."""

import os
import subprocess

import pytest

from apm.data.toy import make_toy_corpus
from apm.utils import read_kv

pytestmark = pytest.mark.slow


def _run(repo_root, cwd, *options):
    env = dict(os.environ)
    env["PATH"] = f"{repo_root / '.venv/bin'}:{env['PATH']}"
    cmd = [str(repo_root / "run.sh"), "--train-set", "train", "--test-sets", "test", *options]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_relative_paths_are_the_callers_and_a_fixed_release_reruns_stage_0(repo_root, tmp_path):
    make_toy_corpus(tmp_path / "olr", {"train": 1, "test": 1}, seconds=(0.5, 0.6))
    stage0 = ("--olr-root", "olr", "--data", "d", "--exp", "e", "--stage", "0", "--stop-stage", "0")
    r = _run(repo_root, tmp_path, *stage0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "d/train/utt2lang").is_file() and (tmp_path / "e/.done").is_dir()
    assert not (repo_root / "egs/olr/d").exists() and not (repo_root / "egs/olr/e").exists()
    r = _run(repo_root, tmp_path, *stage0)
    assert r.returncode == 0 and "done before, skipping" in r.stdout, r.stdout + r.stderr

    # The user fixes a language in the release: stage 0 must import it again.
    utt = "train-spk0-ja-jp-000"
    text = (tmp_path / "olr/train/utt2lang").read_text()
    (tmp_path / "olr/train/utt2lang").write_text(text.replace(f"{utt} ja-jp", f"{utt} ru-ru"))
    r = _run(repo_root, tmp_path, *stage0)
    assert r.returncode == 0 and "done before" not in r.stdout, r.stdout + r.stderr
    assert read_kv(tmp_path / "d/train/utt2lang")[utt] == "ru-ru"
    assert (tmp_path / "e/log/stage0.import_olr.log.1").is_file(), "the previous log is kept"


@pytest.mark.parametrize(
    "options, message",
    [
        (("--stage", "5", "--stop-stage", "3"), "--stage 5 is after --stop-stage 3"),
        (("--stop-stage", "9"), "take stage numbers (0-7)"),
        (("--nj", "0"), "--nj takes a number of parallel jobs >= 1"),
    ],
)
def test_recipe_refuses_empty_stage_ranges_and_no_jobs(repo_root, tmp_path, options, message):
    r = _run(repo_root, tmp_path, "--exp", "e", *options)
    assert r.returncode != 0 and message in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "e").exists(), "refused before doing anything"
