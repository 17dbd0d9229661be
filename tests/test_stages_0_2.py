"""End to end: `egs/olr/run.sh --stage 0 --stop-stage 2 --olr-root DIR` on a tiny corpus:
outputs, a rerun that skips, a run killed in stage 2 that resumes to identical bytes, and a
Kaldi feats.scp copy added afterwards with --kaldi-copy true.

The kill uses the stage-2 test hook APM_FBANK_CRASH_AFTER_JOBS=N: make_fbank SIGKILLs itself
(its workers die with it) after N finished jobs, like a machine going down mid-stage.
"""

import os
import shutil
import subprocess

import pytest

from apm.data.toy import make_toy_corpus
from apm.features import load_vad, read_cuts
from apm.utils import num_frames, read_kv

pytestmark = pytest.mark.slow


def _recipe(repo_root, tmp_path, *options, env_extra=None):
    env = dict(os.environ)
    env["PATH"] = f"{repo_root / '.venv/bin'}:{env['PATH']}"
    env.pop(CRASH, None)
    env.update(env_extra or {})
    cmd = [
        str(repo_root / "egs/olr/run.sh"),
        "--olr-root", str(tmp_path / "olr"),
        "--train-set", "train",
        "--test-sets", "test",
        "--data", str(tmp_path / "data"),
        "--exp", str(tmp_path / "exp"),
        "--fbank-conf", str(tmp_path / "fbank.yaml"),
        "--speed-perturb", "true",
        *options,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


CRASH = "APM_FBANK_CRASH_AFTER_JOBS"
SETS = ("train", "test")


def _snapshot(fbank):
    """Every output file of stage 2 (temporary files excluded), by relative path."""
    return {
        str(p.relative_to(fbank)): p.read_bytes()
        for p in sorted(fbank.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    }


def test_stages_0_to_2_rerun_and_resume_after_kill(repo_root, tmp_path):
    make_toy_corpus(tmp_path / "olr", {"train": 2, "test": 1}, seconds=(0.8, 1.2))
    # Small jobs so that stage 2 has several and a kill lands between them.
    (tmp_path / "fbank.yaml").write_text("fbank:\n  num_mel_bins: 40\ncuts_per_job: 8\n")
    r = _recipe(repo_root, tmp_path, "--stage", "0", "--stop-stage", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    data = tmp_path / "data"
    for s in SETS:
        assert (data / s / "utt2lang").is_file()
        assert (data / "manifests" / s / "cuts.jsonl.gz").is_file()
        cuts, vad = read_cuts(data / "fbank" / s).to_eager(), load_vad(data / "fbank" / s)
        assert sorted(vad) == sorted(cuts.ids)
        assert not (data / "fbank" / s / "feats.scp").exists(), "no Kaldi copy by default"
        for cut in cuts:
            frames = num_frames(cut.num_samples, cut.sampling_rate)
            assert cut.features.storage_type == "lilcom_chunky"
            assert cut.load_features().shape == (frames, 40) and vad[cut.id].shape == (frames,)
    train_ids = read_kv(data / "fbank/train/vad.scp")
    assert len(train_ids) == 36 and "train-spk0-zh-cn-001_sp0.9" in train_ids
    assert "test" in (data / "test/trials").read_text()

    snapshot = _snapshot(data / "fbank")
    r = _recipe(repo_root, tmp_path, "--stage", "0", "--stop-stage", "2")
    assert r.returncode == 0 and r.stdout.count("done before, skipping") == 3, r.stdout
    assert _snapshot(data / "fbank") == snapshot

    # Recompute stage 2 from scratch but kill it after its first job, then rerun the plain
    # command: stages 0-1 are skipped, stage 2 resumes and ends with the same bytes.
    shutil.rmtree(data / "fbank")
    r = _recipe(
        repo_root, tmp_path, "--stage", "2", "--stop-stage", "2", "--force", "true",
        env_extra={CRASH: "1"},
    )  # fmt: skip
    assert r.returncode != 0 and "stage 2 (fbank) failed" in r.stderr, r.stdout + r.stderr
    finished = len(list((data / "fbank/train/jobs").glob("cuts.*.jsonl.gz")))
    assert 1 <= finished < 5, "killed with jobs left (at most --nj run at once)"
    assert not (data / "fbank/train/vad.scp").exists(), "no merged output from a killed run"
    r = _recipe(repo_root, tmp_path, "--stage", "0", "--stop-stage", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        r.stdout.count("done before, skipping") == 2
        and f"{finished} of 5 jobs already done" in r.stdout
    )
    assert _snapshot(data / "fbank") == snapshot

    # A Kaldi user asks for the copy afterwards: stage 2 reruns (its command changed) and
    # only writes feats.scp from the store; the store's bytes stay as they were.
    r = _recipe(repo_root, tmp_path, "--stage", "2", "--stop-stage", "2", "--kaldi-copy", "true")
    assert r.returncode == 0 and "writing their Kaldi copy" in r.stdout, r.stdout + r.stderr
    after = _snapshot(data / "fbank")
    assert {k: v for k, v in after.items() if k in snapshot} == snapshot
    assert read_kv(data / "fbank/train/feats.scp").keys() == train_ids.keys()
