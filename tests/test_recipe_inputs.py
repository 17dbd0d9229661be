"""egs/olr/run.sh with a real-data layout: relative paths given on the command line are the
caller's, stage 0 notices a corrected release, stage ranges and --nj are checked, and a
back-end training set without trials (--backend-train-set) goes through stages 0-2, 5 and 6."""

import os
import subprocess

import kaldiio
import numpy as np
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


def test_underscore_spelling_of_a_path_option_is_the_callers_too(repo_root, tmp_path):
    make_toy_corpus(tmp_path / "olr", {"train": 1, "test": 1}, seconds=(0.5, 0.6))
    stage0 = ("--data", "d", "--exp", "e", "--stage", "0", "--stop-stage", "0")
    r = _run(repo_root, tmp_path, "--olr_root", "olr", *stage0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "d/train/utt2lang").is_file()
    r = _run(repo_root, tmp_path, "--olr_root=olr", *stage0)
    assert r.returncode == 0 and "done before, skipping" in r.stdout, r.stdout + r.stderr


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


def _fake_xvectors(data, system, sets, dim=4, seed=0):
    """Clustered random x-vectors and logits of every utterance of `sets` (no training)."""
    rng = np.random.default_rng(seed)
    languages = sorted(set(read_kv(data / sets[0] / "utt2lang").values()))
    (system / "languages.txt").write_text("\n".join(languages) + "\n")
    centres = {lang: rng.normal(0, 3, dim) for lang in languages}
    for name in sets:
        utt2lang = read_kv(data / name / "utt2lang")
        out = system / "xvectors" / name
        out.mkdir(parents=True)
        for kind, make in (
            ("xvector", lambda lang: centres[lang] + rng.normal(0, 1, dim)),
            ("logits", lambda lang: rng.normal(0, 1, len(languages))),
        ):
            vectors = {u: make(lang).astype(np.float32) for u, lang in utt2lang.items()}
            kaldiio.save_ark(str(out / f"{kind}.ark"), vectors, scp=str(out / f"{kind}.scp"))


def test_backend_train_set_without_trials_is_imported_embedded_and_trains_the_backend(
    repo_root, tmp_path
):
    make_toy_corpus(tmp_path / "olr", {"train": 1, "test": 1, "enroll": 2}, seconds=(0.5, 0.6))
    (tmp_path / "olr/enroll/trials").unlink()  # an enrollment set has no trials
    common = ("--olr-root", "olr", "--data", "d", "--exp", "e", "--backend-train-set", "enroll")
    r = _run(repo_root, tmp_path, *common, "--stage", "0", "--stop-stage", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    d = tmp_path / "d"
    for s in ("train", "test", "enroll"):
        assert (d / "fbank" / s / "cuts.jsonl.gz").is_file(), s
    assert not (d / "enroll/trials").exists()

    # Stage 5 embeds it too (the command is logged even though there is no model here).
    r = _run(repo_root, tmp_path, *common, "--systems", "sys", "--stage", "5", "--stop-stage", "5")
    assert r.returncode != 0 and "stage 5 (extract_sys) failed" in r.stderr
    command = (tmp_path / "e/log/stage5.extract_sys.log").read_text().splitlines()[0]
    root = tmp_path.resolve()
    assert command.endswith(f" {root}/d/fbank/enroll {root}/e/sys/xvectors/enroll"), command

    # Stage 6 trains the back-end on it and scores the test set only.
    n_enroll = len(read_kv(d / "enroll/utt2lang"))
    _fake_xvectors(d, tmp_path / "e/sys", ["train", "test", "enroll"])
    r = _run(repo_root, tmp_path, *common, "--systems", "sys", "--stage", "6", "--stop-stage", "6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"back-end training data: {n_enroll} x-vectors" in r.stdout + r.stderr
    scores = sorted(p.name.split(".")[0] for p in (tmp_path / "e/sys/scores").glob("*.score"))
    assert set(scores) == {"test"}, scores
