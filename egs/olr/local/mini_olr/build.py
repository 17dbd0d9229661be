"""Build mini-OLR: plan, render in parallel, write Kaldi data dirs, oracle alignments, stats.

Layout under the output directory `data/`:
  mini_olr/wav/<set>/<lang>/<utt>.wav   16 kHz mono int16 audio
  mini_olr/text/<set>.txt               the sentence eSpeak read per utterance
  mini_olr/stats.json, README-stats.md  per-set statistics
  mini_olr/.stamp                        size/seed/languages of the finished corpus
  <set>/{wav.scp,utt2spk,spk2utt,utt2lang[,trials]}
  oracle_ali/<set>/{ali.ark,ali.scp,phones.txt}
Everything is rendered into `mini_olr/.staging` and moved into place at the end; the stamp
is written last, so an interrupted run is redone from scratch by the next one.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from apm.data.trials import all_vs_all_trials, write_trials
from apm.utils import atomic_write, num_frames, write_kv
from apm.utils.arkio import write_ark_scp
from apm.utils.errors import ApmError
from apm.utils.log import progress
from mini_olr import synth
from mini_olr.espeak import Espeak
from mini_olr.languages import BABBLE, TARGETS, UNKNOWNS, Language, resolve
from mini_olr.spec import Size, Utterance, get_size, plan_corpus
from mini_olr.tasks import SCORED_SETS, SETS

log = logging.getLogger(__name__)

CHUNK = 16  # utterances per worker process; fixed so that output does not depend on --nj
STAMP_VERSION = 1
SIL = "SIL"


def phone_symbol(mnemonic: str) -> str:
    """eSpeak mnemonic -> alignment symbol: stress marks dropped, pauses (`_...`) are SIL.

    Mnemonics are shared across languages (eSpeak's ASCII phoneme names), so the oracle
    labels are a multilingual phone set, not a language label in disguise.
    """
    if mnemonic.startswith("_"):
        return SIL
    return mnemonic.replace("'", "").replace(",", "") or SIL


def frame_labels(
    phonemes: list[tuple[int, str]], num_samples: int, table: dict[str, int]
) -> np.ndarray:
    """One phone id per 10 ms frame: the phoneme running at the frame's window centre.

    With Kaldi's `--snip-edges=false` frame t's 25 ms window is centred at (t + 0.5) * 10 ms;
    frames before the first phoneme event are silence (id 0).
    """
    n = num_frames(num_samples, 16000)
    centres = (np.arange(n) * 160 + 80).astype(np.int64)
    starts = np.array([s for s, _ in phonemes], dtype=np.int64)
    ids = np.array([table[phone_symbol(p)] for _, p in phonemes] or [0], dtype=np.int32)
    idx = np.searchsorted(starts, centres, side="right") - 1
    return np.where(idx >= 0, ids[np.clip(idx, 0, None)], 0).astype(np.int32)


def _stamp(size_name: str, seed: int, languages: list[Language], unknowns: list[Language]) -> dict:
    return {
        "version": STAMP_VERSION,
        "size": size_name,
        "seed": seed,
        "languages": [f"{lang.code}={lang.voice}" for lang in languages],
        "unknowns": [f"{lang.code}={lang.voice}" for lang in unknowns],
    }


def _pool(nj: int, **kwargs) -> multiprocessing.pool.Pool:
    # One fresh process per task (maxtasksperchild=1) so every task starts from an untouched
    # eSpeak (see mini_olr.synth). Forking is fast; if this process has used eSpeak itself
    # (a library caller, a test), children come from a clean forkserver instead.
    method = "forkserver" if Espeak.used_in_this_process() else "fork"
    return multiprocessing.get_context(method).Pool(nj, maxtasksperchild=1, **kwargs)


def build_vocabularies(langs: list[Language], max_words: int, nj: int) -> dict:
    with _pool(nj) as pool:
        vocabs = pool.map(synth.vocabulary_task, [(lang, max_words) for lang in langs], chunksize=1)
    return {v.language: v for v in vocabs}


def render_all(plan: list[Utterance], vocabs: dict, seed: int, wav_root: Path, nj: int) -> list:
    paths = [str(wav_root / u.set / u.language.code / f"{u.utt}.wav") for u in plan]
    jobs = [(plan[i : i + CHUNK], paths[i : i + CHUNK]) for i in range(0, len(plan), CHUNK)]
    out = []
    with _pool(nj, initializer=synth.init_worker, initargs=(vocabs, seed)) as pool:
        bar = progress(total=len(plan), desc="synthesizing", unit="utt")
        for rendered in pool.imap(synth.render_chunk, jobs):
            out.extend(rendered)
            bar.update(len(rendered))
        bar.close()
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)


def write_set(set_dir: Path, utts: list[Utterance], wav_root: Path, targets: list[str]) -> None:
    """Kaldi data dir of one set (+ trials for test sets: every utt x every target language)."""
    wav = {u.utt: str(wav_root / u.set / u.language.code / f"{u.utt}.wav") for u in utts}
    write_kv(set_dir / "wav.scp", wav)
    write_kv(set_dir / "utt2spk", {u.utt: u.speaker.id for u in utts})
    write_kv(set_dir / "utt2lang", {u.utt: u.language.code for u in utts})
    spk2utt: dict[str, list[str]] = defaultdict(list)
    for u in sorted(utts, key=lambda u: u.utt):
        spk2utt[u.speaker.id].append(u.utt)
    write_kv(set_dir / "spk2utt", {s: " ".join(v) for s, v in spk2utt.items()})
    if utts[0].set in SCORED_SETS:
        utt2lang = {u.utt: u.language.code for u in utts}
        write_trials(set_dir / "trials", all_vs_all_trials(utt2lang, targets))


def write_alignments(ali_dir: Path, final_dir: Path, rendered: list, table: dict[str, int]) -> None:
    """ali.ark/ali.scp (int32 per frame) and phones.txt; the scp points into `final_dir`."""
    ali_dir.mkdir(parents=True, exist_ok=True)
    labels = {r.utt: frame_labels(r.phonemes, r.num_samples, table) for r in rendered}
    write_ark_scp(labels, ali_dir / "ali.ark", dtype=np.int32, ark_name=final_dir / "ali.ark")
    with open(ali_dir / "phones.txt", "w", encoding="utf-8") as f:
        for sym, i in sorted(table.items(), key=lambda kv: kv[1]):
            f.write(f"{sym} {i}\n")


def statistics(plan: list[Utterance], rendered: dict, vocabs: dict, skipped: int) -> dict:
    sets = {}
    for set_name in SETS:
        utts = [u for u in plan if u.set == set_name]
        samples = sum(rendered[u.utt].num_samples for u in utts)
        sets[set_name] = {
            "languages": len({u.language.code for u in utts}),
            "speakers": len({u.speaker.id for u in utts}),
            "utterances": len(utts),
            "hours": round(samples / 16000 / 3600, 4),
        }
    return {
        "sets": sets,
        "vocabulary": {k: len(v.words) for k, v in vocabs.items()},
        "unspeakable_words_skipped": {k: v.skipped for k, v in vocabs.items()},
        "unspeakable_sentences_skipped": skipped,
    }


def stats_markdown(stats: dict) -> str:
    lines = [
        "| set | languages | speakers | utterances | hours |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in stats["sets"].items():
        lines.append(
            f"| {name} | {s['languages']} | {s['speakers']} | {s['utterances']} | {s['hours']:.3f} |"
        )
    words = sum(stats["unspeakable_words_skipped"].values())
    lines.append("")
    lines.append(
        f"Unspeakable text skipped: {words} candidate words, "
        f"{stats['unspeakable_sentences_skipped']} sentences."
    )
    return "\n".join(lines) + "\n"


def write_staging(
    staging: Path, out: Path, plan: list[Utterance], rendered: dict, targets: list[str]
) -> None:
    """Data dirs, oracle alignments and texts of every set into `staging`; paths written in
    them (wav.scp, ali.scp) already point to their final place under `out`."""
    symbols = sorted({phone_symbol(p) for r in rendered.values() for _, p in r.phonemes} - {SIL})
    table = {SIL: 0, **{s: i + 1 for i, s in enumerate(symbols)}}
    (staging / "text").mkdir(parents=True, exist_ok=True)
    for set_name in SETS:
        utts = [u for u in plan if u.set == set_name]
        write_set(staging / "sets" / set_name, utts, out / "mini_olr" / "wav", targets)
        write_alignments(
            staging / "oracle_ali" / set_name,
            out / "oracle_ali" / set_name,
            [rendered[u.utt] for u in utts],
            table,
        )
        with open(staging / "text" / f"{set_name}.txt", "w", encoding="utf-8") as f:
            for u in sorted(utts, key=lambda u: u.utt):
                f.write(f"{u.utt} {rendered[u.utt].text}\n")


def publish(staging: Path, out: Path) -> None:
    """Move the staged corpus into place, replacing any previous one."""
    _replace_dir(staging / "wav", out / "mini_olr" / "wav")
    _replace_dir(staging / "text", out / "mini_olr" / "text")
    for set_name in SETS:
        _replace_dir(staging / "sets" / set_name, out / set_name)
        _replace_dir(staging / "oracle_ali" / set_name, out / "oracle_ali" / set_name)
    shutil.rmtree(staging)


def make_mini_olr(
    out_dir: str | os.PathLike,
    size_name: str = "mini",
    seed: int = 777,
    nj: int = 2,
    languages: list[str] | None = None,
    unknowns: list[str] | None = None,
) -> dict:
    """Synthesize mini-OLR under `out_dir` (see module doc); returns the statistics.

    Skips the work when `out_dir/mini_olr/.stamp` records the same size, seed and languages.
    """
    size: Size = get_size(size_name)
    if nj < 1:
        raise ApmError(f"--nj must be at least 1, got {nj}")
    langs = resolve(languages or list(size.languages), TARGETS, "target")
    unks = resolve(unknowns if unknowns is not None else list(size.unknowns), UNKNOWNS, "unknown")
    if {lang.code for lang in langs} & {lang.code for lang in unks}:
        raise ApmError("a language cannot be both a target and an unknown language")
    out = Path(out_dir).absolute()
    root = out / "mini_olr"
    stamp = _stamp(size_name, seed, langs, unks)
    stamp_file = root / ".stamp"
    complete = all((out / s / "wav.scp").is_file() for s in SETS)
    if complete and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        log.info("mini-OLR (%s, seed %d) already in %s; skipping", size_name, seed, out)
        return json.loads((root / "stats.json").read_text())
    if stamp_file.exists():
        stamp_file.unlink()

    staging = root / ".staging"
    if staging.exists():
        shutil.rmtree(staging)
    log.info("building vocabularies of %d languages", len(langs) + len(unks) + len(BABBLE))
    vocabs = build_vocabularies([*langs, *unks, *BABBLE], size.max_words, nj)
    plan = plan_corpus(size, langs, unks, seed)
    log.info("rendering %d utterances with %d jobs", len(plan), nj)
    rendered_list = render_all(plan, vocabs, seed, staging / "wav", nj)
    rendered = {r.utt: r for r in rendered_list}
    skipped = sum(r.skipped for r in rendered_list)

    stats = statistics(plan, rendered, vocabs, skipped)
    write_staging(staging, out, plan, rendered, [lang.code for lang in langs])
    publish(staging, out)
    with atomic_write(root / "stats.json") as f:
        json.dump(stats, f, indent=2, ensure_ascii=False)
    with atomic_write(root / "README-stats.md") as f:
        f.write(stats_markdown(stats))
    with atomic_write(stamp_file) as f:
        json.dump(stamp, f)
    log.info("mini-OLR written to %s:\n%s", out, stats_markdown(stats))
    return stats
