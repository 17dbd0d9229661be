"""mini-OLR synthesis (egs/olr/local/mini_olr): layout, determinism, splits, trials, durations, errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
from mini_olr.build import _pool, frame_labels, make_mini_olr, phone_symbol
from mini_olr.languages import TARGETS, UNKNOWNS, Language, resolve
from mini_olr.spec import (
    DEV_VARIANTS,
    SET_SPECS,
    TEST_VARIANTS,
    TRAIN_VARIANTS,
    VARIANTS,
    get_size,
    make_speakers,
)
from mini_olr.tasks import CONDITIONS, DEV_SETS, SCORED_SETS, SETS, TEST_SETS
from mini_olr.text import Vocabulary, is_speakable

from apm.data.trials import read_trials
from apm.utils import ApmError, num_frames, read_kv

SEED = 777


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "data"
    make_mini_olr(out, "tiny", seed=SEED, nj=2)
    return out


def _digest(root: Path) -> dict[str, str]:
    """md5 of every file, with the corpus root replaced so that paths compare equal."""
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.suffix in ("", ".scp", ".txt"):
                data = data.replace(str(root).encode(), b"ROOT")
            out[str(f.relative_to(root))] = hashlib.md5(data).hexdigest()
    return out


def test_layout_and_formats(tiny: Path) -> None:
    for s in SETS:
        wav = read_kv(tiny / s / "wav.scp")
        utt2spk = read_kv(tiny / s / "utt2spk")
        utt2lang = read_kv(tiny / s / "utt2lang")
        spk2utt = read_kv(tiny / s / "spk2utt")
        assert wav and set(wav) == set(utt2spk) == set(utt2lang)
        assert sorted(u for us in spk2utt.values() for u in us.split()) == sorted(wav)
        for utt, spk in utt2spk.items():
            assert utt.startswith(spk + "_"), (utt, spk)
        path = next(iter(wav.values()))
        assert Path(path).is_absolute()
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    stats = json.loads((tiny / "mini_olr" / "stats.json").read_text())
    assert set(stats["sets"]) == set(SETS)
    assert (tiny / "mini_olr" / "README-stats.md").read_text().startswith("| set |")


def test_the_recipe_sets_are_defined_once(shell_env) -> None:
    """mini_olr.tasks names the sets; synthesis specs, conditions and the shell agree with it."""
    assert set(SET_SPECS) == set(SETS) and set(SCORED_SETS) == set(DEV_SETS) | set(TEST_SETS)
    assert set(CONDITIONS.values()) == set(TEST_SETS)
    cmd = [sys.executable, "-m", "mini_olr.tasks"]
    for what, expected in (("test", " ".join(TEST_SETS)), ("dev", " ".join(DEV_SETS)),
                           ("conditions", "full=task_full short=task_short cross=task_cross "
                            "noisy=task_noisy open=task_open")):  # fmt: skip
        done = subprocess.run([*cmd, what], env=shell_env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout == expected + "\n", done.stderr
    done = subprocess.run([*cmd, "tests"], env=shell_env, capture_output=True, text=True)
    assert (
        done.returncode == 1
        and "usage: python -m mini_olr.tasks test|dev|conditions" in done.stderr
    )


def test_same_seed_gives_identical_corpus_for_any_nj(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "data"
    make_mini_olr(again, "tiny", seed=SEED, nj=1)
    assert _digest(again) == _digest(tiny)


def test_rerun_with_same_options_skips(tiny: Path) -> None:
    stamp = tiny / "mini_olr" / ".stamp"
    before = stamp.stat().st_mtime_ns
    make_mini_olr(tiny, "tiny", seed=SEED, nj=2)
    assert stamp.stat().st_mtime_ns == before


def test_train_dev_and_test_speakers_are_disjoint(tiny: Path) -> None:
    pools = [set(TRAIN_VARIANTS), set(DEV_VARIANTS), set(TEST_VARIANTS)]
    assert sum(map(len, pools)) == len(set().union(*pools)) == len(VARIANTS)
    speakers = {s: set(read_kv(tiny / s / "utt2spk").values()) for s in SETS}
    dev = set().union(*(speakers[s] for s in DEV_SETS))
    test = set().union(*(speakers[s] for s in TEST_SETS))
    assert dev and test and not speakers["train"] & (dev | test) and not dev & test
    for code in TARGETS:
        assert all(s.variant in TRAIN_VARIANTS for s in make_speakers(SEED, code, "tr", 20))
        assert all(s.variant in TEST_VARIANTS for s in make_speakers(SEED, code, "te", 20))
        assert all(s.variant in DEV_VARIANTS for s in make_speakers(SEED, code, "dv", 20))


def test_trials_match_utt2lang(tiny: Path) -> None:
    targets = set(read_kv(tiny / "train" / "utt2lang").values())
    assert len(targets) <= 4
    for s in SCORED_SETS:
        utt2lang = read_kv(tiny / s / "utt2lang")
        trials = read_trials(tiny / s / "trials")
        assert {(t.lang, t.utt) for t in trials} == {(g, u) for u in utt2lang for g in targets}
        for t in trials:
            assert t.is_target == (utt2lang[t.utt] == t.lang)
    unknown = set(read_kv(tiny / "task_open" / "utt2lang").values()) - targets
    assert len(unknown) >= 2
    assert unknown <= set(UNKNOWNS)


def test_durations(tiny: Path) -> None:
    for short in ("dev_short", "task_short"):
        for path in read_kv(tiny / short / "wav.scp").values():
            assert sf.info(path).frames == 16000
    for path in read_kv(tiny / "task_full" / "wav.scp").values():
        assert 3.0 <= sf.info(path).duration <= 10.0


def test_oracle_alignment_matches_audio(tiny: Path) -> None:
    phones = (tiny / "oracle_ali" / "train" / "phones.txt").read_text().split("\n")
    assert phones[0] == "SIL 0"
    n_phones = len([p for p in phones if p])
    wav = read_kv(tiny / "train" / "wav.scp")
    ali = dict(kaldiio.load_scp(str(tiny / "oracle_ali" / "train" / "ali.scp")))
    assert set(ali) == set(wav)
    for utt, labels in ali.items():
        assert labels.dtype == np.int32
        assert len(labels) == num_frames(sf.info(wav[utt]).frames, 16000)
        assert labels.max() < n_phones
        assert 0.5 < (labels != 0).mean() < 1.0  # mostly speech, silence at the edges


def test_frame_labels_take_the_phoneme_at_the_window_centre() -> None:
    table = {"SIL": 0, "a": 1, "b": 2}
    # 'a' from sample 100, pause from 240, 'b' from 300: frame centres are 80, 240, 400.
    labels = frame_labels([(100, "'a"), (240, "_:"), (300, "b")], 480, table)
    assert labels.tolist() == [0, 0, 2]
    assert phone_symbol(",o") == "o" and phone_symbol("_|") == "SIL"


def test_is_speakable_rejects_language_switch_and_spelling() -> None:
    assert is_speakable("zd@-r'Astvujt;i", "здравствуйте")
    assert not is_speakable("_:(en)tS'aIni:z(ja)l'et@", "東")  # kanji read as 'Chinese letter'
    assert not is_speakable("b,Ev,Eg,Ed'E", "бвгд")  # spelled letter by letter
    assert not is_speakable("khkhkh", "ㅋㅋㅋ")  # no syllable at all
    assert is_speakable("ts.'ong55_| k'uo35_|", "中国")  # one stress per Han syllable is fine


def test_unspeakable_text_is_skipped_and_counted(tiny: Path) -> None:
    stats = json.loads((tiny / "mini_olr" / "stats.json").read_text())
    assert sum(stats["unspeakable_words_skipped"].values()) > 0
    # Japanese without the kana filter: eSpeak reads kanji as English letter names, so every
    # all-kanji word is rejected (mixed words lose their kanji silently: hence kana_only).
    with _pool(1) as pool:
        vocab = pool.apply(_vocabulary_in_child, (Language("ja-jp", "ja", "wordfreq:ja"), 200))
    assert vocab.skipped > 0
    assert not [w for w in vocab.words if all("\u4e00" <= ch <= "\u9fff" for ch in w)]
    # A vocabulary of unspeakable words only: every sentence is rejected and counted.
    with _pool(1) as pool, pytest.raises(ApmError, match=r"\(10 unspeakable\)"):
        pool.apply(_render_unspeakable_in_child, (str(tiny),))


def _vocabulary_in_child(lang: Language, max_words: int) -> Vocabulary:
    from mini_olr.espeak import Espeak
    from mini_olr.text import build_vocabulary

    return build_vocabulary(Espeak(), lang, max_words)


def _render_unspeakable_in_child(tmp: str) -> None:
    from mini_olr import synth
    from mini_olr.spec import plan_corpus

    ja = TARGETS["ja-jp"]
    vocab = Vocabulary("ja-jp", ["東京", "日本"], np.array([0.5, 0.5]), 0, "")
    utt = plan_corpus(get_size("tiny"), [ja], [], SEED)[0]
    synth.Renderer({"ja-jp": vocab}, SEED).render(utt, f"{tmp}/unused.wav")


def test_unknown_language_is_an_error_listing_the_available_ones() -> None:
    with pytest.raises(ApmError, match="available: zh-cn ct-cn"):
        resolve(["xx-yy"], TARGETS, "target")
    with pytest.raises(ApmError, match="has no voice 'qqq'; voices: af am"):
        resolve(["qq-qq=qqq"], TARGETS, "target")
    with pytest.raises(ApmError, match="no text for eSpeak voice 'qya'"):
        resolve(["qy-qy=qya"], TARGETS, "target")
    with pytest.raises(ApmError, match="unknown corpus size 'huge'; available: tiny mini full"):
        get_size("huge")


def test_unknown_voice_is_an_error_listing_voices(tmp_path: Path, shell_env) -> None:
    # A CODE=VOICE pair whose voice eSpeak lacks (CLDR has Yoruba, eSpeak does not).
    proc = subprocess.run(
        [sys.executable, "-m", "mini_olr", "--size", "tiny", "--nj", "1",
         "--languages", "id-id ms-my yo-ng=yo", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, env=shell_env,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "ERROR" in proc.stderr and "has no voice 'yo'" in proc.stderr
    assert "voices:" in proc.stderr and " cmn " in proc.stderr
    assert not (tmp_path / "data").exists()
    # A variant eSpeak lacks: the error lists the variants.
    with _pool(1) as pool, pytest.raises(ApmError, match="variants: .* m3 "):
        pool.apply(_set_voice_in_child, ("ru", "nosuchvariant"))


def _set_voice_in_child(voice: str, variant: str) -> None:
    from mini_olr.espeak import Espeak

    Espeak().set_voice(voice, variant)


def test_weak_baseline_cavg() -> None:
    from weak_baseline import cavg

    targets = ["a", "b", "c"]
    labels = ["a", "b", "c", "x"]  # 'x': an unknown language
    perfect = np.log(np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.01, 0.01, 0.98]]))
    assert cavg(perfect, labels[:3], targets) == pytest.approx(0.0)
    uniform = np.log(np.full((4, 3), 1 / 3))  # LLR 0 everywhere: every trial rejected
    assert cavg(uniform, labels, targets) == pytest.approx(0.5)
    # Accepting the unknown utterance as 'a' costs (1 - 0.5) / 3 non-target classes / 3 targets.
    open_set = np.log(np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.01, 0.01, 0.98],
                                [0.98, 0.01, 0.01]]))  # fmt: skip
    assert cavg(open_set, labels, targets) == pytest.approx(0.5 / 3 / 3)
