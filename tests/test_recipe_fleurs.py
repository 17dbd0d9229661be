"""egs/fleurs: a miniature FLEURS (local/make_mini_fleurs.py) through stage 0 (lhotse's
prepare_fleurs -> Kaldi dirs + trials) and the whole recipe, stages 0-7."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from apm.data.kaldi_dir import read_kaldi_dir
from apm.data.trials import Trial, all_vs_all_trials, read_trials
from apm.utils import ApmError

sys.path.insert(0, str(REPO / "egs/fleurs/local"))
import make_mini_fleurs  # noqa: E402
import prepare_fleurs  # noqa: E402

TRAINED = ["id_id", "ms_my", "ru_ru"]
HELD_OUT = "uk_ua"
SPEAKERS = {"train": 2, "dev": 1, "test": 2}
UTTS = 3  # per speaker


@pytest.fixture(scope="module")
def fleurs(tmp_path_factory) -> Path:
    """3 training + 1 held-out language: 6 train, 3 dev, 6 test utterances per language."""
    root = tmp_path_factory.mktemp("corpus") / "fleurs"
    return make_mini_fleurs.make_mini_fleurs(root, [*TRAINED, HELD_OUT], SPEAKERS, UTTS, nj=2)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv/bin'}:{env['PATH']}"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_all_vs_all_trials_target_only_for_the_own_language():
    trials = all_vs_all_trials({"u2": "b", "u1": "a", "u3": "x"}, ["b", "a"])
    assert trials == [
        Trial("a", "u1", True), Trial("b", "u1", False),
        Trial("a", "u2", False), Trial("b", "u2", True),
        Trial("a", "u3", False), Trial("b", "u3", False),  # open-set: no target trial
    ]  # fmt: skip
    with pytest.raises(ApmError, match="at least 2 target languages"):
        all_vs_all_trials({"u1": "a"}, ["a"])


def test_mini_fleurs_has_the_downloader_layout(fleurs):
    for lang in [*TRAINED, HELD_OUT]:
        assert (fleurs / lang / f".{lang}_completed").is_file()
        for split, n_spk in SPEAKERS.items():
            rows = [
                line.split("\t")
                for line in (fleurs / "metadata" / lang / f"{split}.tsv").read_text().splitlines()
            ]
            assert len(rows) == n_spk * UTTS and all(len(r) == 7 for r in rows)
            wavs = sorted(p.name for p in (fleurs / lang / split).glob("*.wav"))
            assert wavs == sorted(r[1] for r in rows)
            # each speaker of a split reads the same prompts: lhotse numbers the readings
            prompts = [r[0] for r in rows]
            assert all(prompts.count(p) == n_spk for p in prompts)
    # a rerun with the same options keeps the corpus as it is
    before = (fleurs / "metadata/id_id/train.tsv").stat().st_mtime_ns
    make_mini_fleurs.make_mini_fleurs(fleurs, [*TRAINED, HELD_OUT], SPEAKERS, UTTS)
    assert (fleurs / "metadata/id_id/train.tsv").stat().st_mtime_ns == before


def test_prepare_names_bad_input(fleurs, tmp_path):
    assert prepare_fleurs.choose_languages(fleurs, [], [HELD_OUT]) == TRAINED  # all but held out
    corpus = tmp_path / "fleurs"
    shutil.copytree(fleurs, corpus)
    with pytest.raises(ApmError, match="'xx_yy' not found.*lhotse download fleurs -l xx_yy"):
        prepare_fleurs.prepare(corpus, tmp_path / "data", ["id_id", "xx_yy"], [])
    with pytest.raises(ApmError, match="uk_ua are in both --langs and --open-langs"):
        prepare_fleurs.prepare(corpus, tmp_path / "data", TRAINED + [HELD_OUT], [HELD_OUT])
    tsv = corpus / "metadata/ms_my/dev.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    tsv.write_text(lines[0] + "1\tbroken line\n" + "".join(lines[1:]))
    first_wav = lines[0].split("\t")[1]
    (corpus / "ms_my/dev" / first_wav).unlink()
    with pytest.raises(ApmError) as e:
        prepare_fleurs.prepare(corpus, tmp_path / "data", TRAINED, [])
    assert f"({tsv}:2): 2 tab-separated fields, not 7" in str(e.value)
    assert f"({tsv}:1): audio" in str(e.value) and "not found" in str(e.value)
    assert not (tmp_path / "data/train").exists()
    # --skip-bad: lhotse reads a copy of the metadata without the bad lines; they are counted
    prepare_fleurs.prepare(corpus, tmp_path / "data", TRAINED, [], skip_bad=True)
    dev = read_kaldi_dir(tmp_path / "data/dev")
    assert len(dev.utterances) == len(TRAINED) * SPEAKERS["dev"] * UTTS - 1
    assert not any(first_wav in path for path in dev.wav.values())
    assert all(path.startswith(str(corpus)) for path in dev.wav.values())
    assert len((tmp_path / "data/dev/skipped").read_text().splitlines()) == 2
    assert not (tmp_path / "data/train/skipped").exists()


def test_empty_split_and_audio_without_metadata_are_named(fleurs, tmp_path, caplog):
    corpus = tmp_path / "fleurs"
    shutil.copytree(fleurs, corpus)
    (corpus / "metadata/ms_my/dev.tsv").write_text("")
    with pytest.raises(ApmError, match=r"language ms_my, split dev: .*dev.tsv has no lines"):
        prepare_fleurs.prepare(corpus, tmp_path / "data", TRAINED, [])
    shutil.copytree(fleurs / "metadata/ms_my", corpus / "metadata/ms_my", dirs_exist_ok=True)
    shutil.rmtree(corpus / "metadata" / HELD_OUT)
    with caplog.at_level("WARNING"):
        assert prepare_fleurs.available_languages(corpus) == TRAINED
    assert f"1 language directory with audio but no metadata/<lang>/ left out: {HELD_OUT}" in (
        caplog.text
    )


def test_language_subset_writes_only_those_languages(fleurs, tmp_path):
    cmd = [str(REPO / "egs/fleurs/run.sh"), "--stop-stage", "0", "--fleurs-root", str(fleurs),
           "--langs", "id_id ru_ru", "--data", "data", "--exp", "exp"]  # fmt: skip
    r = _run(cmd, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = tmp_path / "data"
    names = sorted(p.name for p in data.iterdir() if not p.name.startswith(".lock"))
    assert names == ["dev", "fleurs_manifests", "test", "train"]
    for name in ("train", "dev", "test"):
        assert set((data / name / "utt2lang").read_text().split()[1::2]) == {"id_id", "ru_ru"}
    trials = read_trials(data / "test/trials")
    assert len(trials) == 2 * 2 * SPEAKERS["test"] * UTTS
    # the recorded stage 0 is skipped on a rerun; an edited corpus reruns it
    assert "done before, skipping" in _run(cmd, tmp_path).stdout
    (fleurs / "metadata/id_id/.touched").write_text("x")
    try:
        assert "finished in" in _run(cmd, tmp_path).stdout
    finally:
        (fleurs / "metadata/id_id/.touched").unlink()


def test_run_sh_help_and_option_checks(tmp_path):
    run_sh = str(REPO / "egs/fleurs/run.sh")
    r = _run([run_sh, "--help"], tmp_path)
    assert r.returncode == 0 and "--open-langs" in r.stdout and "(default: gpu)" in r.stdout
    r = _run([run_sh, "--exp", "exp"], tmp_path)
    assert r.returncode != 0 and "stage 0 needs --fleurs-root" in r.stderr
    r = _run([run_sh, "--fleurs-root", "x", "--confs", "tpu", "--exp", "exp"], tmp_path)
    assert r.returncode != 0 and "--confs takes cpu or gpu, got 'tpu'" in r.stderr
    assert not (tmp_path / "exp").exists(), "option errors stop before any stage"


def _tiny_conf(dest: Path, system: str) -> None:
    cfg = yaml.safe_load((REPO / "egs/fleurs/conf/cpu" / f"{system}.yaml").read_text())
    cfg["model"].update(channels=32, stats_channels=64, embed_dim=32, phone_channels=32)
    cfg["train"].update(epochs=2, batch_size=16, chunk_min_frames=80, chunk_max_frames=120)
    cfg["train"].update(min_utt_frames=40, average_last=1, bn_recalibration_batches=5)
    dest.mkdir()
    (dest / f"{system}.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
def test_whole_fleurs_recipe_closed_and_open_set(fleurs, tmp_path):
    _tiny_conf(tmp_path / "conf", "apm_am")
    cmd = [str(REPO / "egs/fleurs/run.sh"), "--fleurs-root", str(fleurs), "--confs", "cpu",
           "--langs", " ".join(TRAINED), "--open-langs", HELD_OUT, "--data", "data",
           "--exp", "exp", "--system-conf-dir", "conf", "--systems", "apm_am"]  # fmt: skip
    r = _run(cmd, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    data, exp = tmp_path / "data", tmp_path / "exp"
    n_test = SPEAKERS["test"] * UTTS
    for name, langs in [("dev", TRAINED), ("test", TRAINED), ("test_open", TRAINED + [HELD_OUT])]:
        kd = read_kaldi_dir(data / name, train_languages=set(TRAINED))
        assert kd.languages == sorted(langs)
        assert len(kd.trials) == len(kd.utterances) * len(TRAINED)
        targets = [t for t in kd.trials if t.is_target]
        assert len(targets) == len([u for u, lang in kd.utt2lang.items() if lang in TRAINED])
    open_trials = read_trials(data / "test_open/trials")
    held_out = [t for t in open_trials if t.utt.startswith(f"{HELD_OUT}-")]
    assert len(held_out) == n_test * len(TRAINED) and not any(t.is_target for t in held_out)

    results = json.loads((exp / "apm_am/results.json").read_text())
    text = json.dumps(results)
    assert '"open_set": true' in text and '"open_set": false' in text
    table = (exp / "RESULTS.md").read_text()
    assert "Generated by `egs/fleurs/run.sh " in table
    assert "| system | dev | test | test_open (open-set) |" in table
    row = next(line for line in table.splitlines() if line.startswith("| apm_am |"))
    assert len(row.split("|")) == 6  # system + 3 tasks, each Cavg / EER
    details = (exp / "apm_am/results.md").read_text()
    assert "| test | closed |" in details and "| test_open | open |" in details
    assert (exp / "apm_am/model/package.json").is_file()
