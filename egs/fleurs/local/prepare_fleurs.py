#!/usr/bin/env python3
"""Stage 0 of egs/fleurs: FLEURS, as lhotse's downloader lays it out, to Kaldi data dirs.

Input: <root>/<lang>/{train,dev,test}/<file>.wav and <root>/metadata/<lang>/{train,dev,test}.tsv
(`lhotse download fleurs`). lhotse's own `prepare_fleurs` reads it (its manifests are kept in
<data>/fleurs_manifests/); this writes <data>/<set>/{wav.scp,utt2spk,spk2utt,utt2lang,trials}:
  train      the train split of the training languages
  dev        their dev split, with trials (scored like egs/olr's dev sets)
  test       their test split, with trials (closed-set)
  test_open  with --open-langs: the test split of the training and the held-out languages;
             held-out utterances have only non-target trials (open-set)
FLEURS has no trials: every utterance is tried against every training language.
Utterance ids are `<lang>-<lhotse supervision id>`, speakers `<lang>-<lhotse speaker>` (FLEURS
names no speakers; lhotse's speaker is the prompt id and the reading's number).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from apm.bin.cli import main, str2bool
from apm.data.kaldi_dir import KaldiDir, portable_path, write_kaldi_dir
from apm.data.problems import Problem, settle
from apm.data.trials import all_vs_all_trials
from apm.utils import ApmError, atomic_write
from apm.utils.defaults import NJ

SPLITS = ("train", "dev", "test")
TSV_FIELDS = 7  # id, file name, raw text, text, characters, number of samples, gender
DOWNLOAD_HINT = "download it with: lhotse download fleurs -l {lang} <dir> (writes <dir>/fleurs)"

log = logging.getLogger("prepare_fleurs")


def available_languages(root: Path) -> list[str]:
    """The languages present under `root`: a <lang>/ audio dir and a metadata/<lang>/ dir."""
    meta = root / "metadata"
    if not meta.is_dir():
        raise ApmError(
            f"{root}: no metadata/ directory; expected FLEURS as lhotse's downloader writes it "
            "(<root>/<lang>/{train,dev,test}/*.wav, <root>/metadata/<lang>/{train,dev,test}.tsv)"
        )
    found = sorted(p.name for p in meta.iterdir() if p.is_dir() and (root / p.name).is_dir())
    orphans = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and p.name != "metadata" and p.name not in found
        and any((p / split).is_dir() for split in SPLITS)
    )  # fmt: skip
    if orphans:
        log.warning(
            "%s: %d language director%s with audio but no metadata/<lang>/ left out: %s; "
            "download their metadata again (%s)",
            root, len(orphans), "y" if len(orphans) == 1 else "ies", " ".join(orphans),
            DOWNLOAD_HINT.format(lang=orphans[0]),
        )  # fmt: skip
    return found


def choose_languages(root: Path, langs: list[str], open_langs: list[str]) -> list[str]:
    """The training languages (all found but the held-out ones when `langs` is empty), after
    checking that every named language is present and none is both trained and held out."""
    found = available_languages(root)
    for lang in [*langs, *open_langs]:
        if lang not in found:
            raise ApmError(
                f"{root}: language '{lang}' not found (no {root / lang} or "
                f"{root / 'metadata' / lang}); found: {' '.join(found) or 'none'}; "
                + DOWNLOAD_HINT.format(lang=lang)
            )
    both = sorted(set(langs) & set(open_langs))
    if both:
        raise ApmError(f"languages {' '.join(both)} are in both --langs and --open-langs")
    if len(set(open_langs)) != len(open_langs) or len(set(langs)) != len(langs):
        raise ApmError(f"a language is named twice: --langs '{' '.join(langs)}' "
                       f"--open-langs '{' '.join(open_langs)}'")  # fmt: skip
    trained = langs or [lang for lang in found if lang not in open_langs]
    if len(trained) < 2:
        raise ApmError(f"language recognition needs at least 2 training languages, got {trained}")
    return trained


@dataclass
class Metadata:
    """One language's tsv lines, split by split: those lhotse can use and the problems of the
    others (as lhotse's prepare_fleurs parses them: 7 tab-separated fields, an integer sample
    count, a file listed once that exists; lhotse itself stops at the first bad line with a
    bare unpacking error, or a missing file)."""

    kept: dict[str, list[str]]
    problems: dict[str, list[Problem]]


def read_metadata(root: Path, lang: str) -> Metadata:
    meta = Metadata({}, {})
    for split in SPLITS:
        tsv = root / "metadata" / lang / f"{split}.tsv"
        if not tsv.is_file():
            raise ApmError(f"{tsv}: missing; {DOWNLOAD_HINT.format(lang=lang)}")
        seen: set[str] = set()
        meta.kept[split], meta.problems[split] = [], []
        with open(tsv, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                bad = _line_problems(root / lang / split, f"{tsv}:{lineno}", line, seen)
                meta.problems[split] += bad
                if not bad:
                    meta.kept[split].append(line)
    return meta


def _line_problems(audio_dir: Path, where: str, line: str, seen: set[str]) -> list[Problem]:
    """What is wrong with one tsv line (`where`: file:line), as Problems of its audio file."""
    fields = line.strip().split("\t")
    if len(fields) != TSV_FIELDS:
        return [Problem("unparsed-line", where, f"{len(fields)} tab-separated fields, not {TSV_FIELDS}",
                        "fix or remove the line (id, file, raw text, text, chars, samples, "
                        "gender)")]  # fmt: skip
    name = fields[1]
    fix = "fix or remove the line"
    if not fields[5].isdigit():
        return [Problem(name, where, f"sample count '{fields[5]}' is not an integer", fix)]
    if name in seen:
        return [Problem(name, where, "file listed twice", "remove one of the lines")]
    seen.add(name)
    wav = audio_dir / f"{Path(name).stem}.wav"
    if not wav.is_file():
        return [Problem(name, where, f"audio {wav} not found", f"{fix}, or download it again")]
    return []


def usable_root(root: Path, metas: dict[str, Metadata], shadow: Path) -> Path:
    """`root` itself when every tsv line is usable, else `shadow`: the same layout with links
    to the audio directories and only the usable tsv lines (lhotse reads every line)."""
    if not any(ps for m in metas.values() for ps in m.problems.values()):
        return root
    shutil.rmtree(shadow, ignore_errors=True)
    for lang, meta in metas.items():
        (shadow / "metadata" / lang).mkdir(parents=True)
        (shadow / lang).symlink_to((root / lang).resolve(), target_is_directory=True)
        for split, lines in meta.kept.items():
            with atomic_write(shadow / "metadata" / lang / f"{split}.tsv", encoding="utf-8") as f:
                f.writelines(lines)
    return shadow


def lhotse_manifests(
    root: Path, langs: list[str], out: Path, nj: int, skip_bad: bool
) -> tuple[dict, dict[str, Metadata]]:
    """lhotse's prepare_fleurs on `langs` (manifests written under `out`), every language and
    supervision accounted for; bad tsv lines stop it, or with `skip_bad` are left out (and
    logged). Returns the manifests and each language's Metadata."""
    from lhotse.recipes.fleurs import prepare_fleurs

    metas = {lang: read_metadata(root, lang) for lang in langs}
    problems = [p for m in metas.values() for split in SPLITS for p in m.problems[split]]
    settle(problems, skip_bad, f"FLEURS under {root}")
    for lang, meta in metas.items():  # lhotse would stop with "No recordings left", unnamed
        for split in SPLITS:
            if not meta.kept[split]:
                tsv = root / "metadata" / lang / f"{split}.tsv"
                what = "has no lines" if not meta.problems[split] else "has no usable line"
                raise ApmError(
                    f"FLEURS language {lang}, split {split}: {tsv} {what}; every language needs "
                    f"utterances in {', '.join(SPLITS)}: {DOWNLOAD_HINT.format(lang=lang)}, "
                    "or leave the language out (--langs)"
                )
    source = usable_root(root, metas, out / "usable_corpus")
    manifests = prepare_fleurs(source, out, languages=langs, num_jobs=nj)
    for lang, meta in metas.items():
        if lang not in manifests:
            raise ApmError(f"lhotse's prepare_fleurs skipped {lang} under {source}")
        got = sum(len(manifests[lang][split]["supervisions"]) for split in SPLITS)
        lines = sum(len(meta.kept[split]) for split in SPLITS)
        if got != lines:
            raise ApmError(
                f"lhotse's prepare_fleurs kept {got} of the {lines} utterances of {lang} "
                f"(metadata under {source / 'metadata' / lang}); check their audio files"
            )
    return manifests, metas


def split_dir(manifests: dict, langs: list[str], split: str, name: str) -> KaldiDir:
    """One Kaldi data dir of the `split` of `langs` (no trials)."""
    wav, utt2spk, utt2lang = {}, {}, {}
    for lang in langs:
        recordings = manifests[lang][split]["recordings"]
        for sup in manifests[lang][split]["supervisions"]:
            utt = f"{lang}-{sup.id}"
            # realpath: the audio, not its link in a usable_root shadow
            source = os.path.realpath(recordings[sup.recording_id].sources[0].source)
            wav[utt] = portable_path(source)
            utt2spk[utt] = f"{lang}-{sup.speaker}"
            utt2lang[utt] = lang
    if not wav:
        raise ApmError(f"FLEURS {split} split of {' '.join(langs)}: no utterances for set {name}")
    return KaldiDir(path=Path(name), wav=wav, utt2spk=utt2spk, utt2lang=utt2lang)


def prepare(
    root: str | Path,
    data: str | Path,
    langs: list[str],
    open_langs: list[str],
    nj: int = 1,
    skip_bad: bool = False,
) -> dict[str, KaldiDir]:
    """Write data/{train,dev,test[,test_open]} (see the module doc); returns them by name."""
    root, data = Path(root), Path(data)
    if not root.is_dir():
        raise ApmError(f"{root}: FLEURS root not found; {DOWNLOAD_HINT.format(lang='<lang>')}")
    trained = choose_languages(root, langs, open_langs)
    manifests, metas = lhotse_manifests(
        root, trained + open_langs, data / "fleurs_manifests", nj, skip_bad
    )
    sets = {
        "train": split_dir(manifests, trained, "train", "train"),
        "dev": split_dir(manifests, trained, "dev", "dev"),
        "test": split_dir(manifests, trained, "test", "test"),
    }
    if open_langs:
        sets["test_open"] = split_dir(manifests, trained + open_langs, "test", "test_open")
    for name, kd in sets.items():
        split = "test" if name == "test_open" else name
        kd.skipped = [p for lang in kd.languages for p in metas[lang].problems[split]]
        if name != "train":
            kd.trials = all_vs_all_trials(kd.utt2lang, trained)
        write_kaldi_dir(kd, data / name)
        counts = Counter(kd.utt2lang.values())
        log.info("%s: %d utterances (%s)%s%s", data / name, len(kd.utt2lang),
                 " ".join(f"{k}:{v}" for k, v in sorted(counts.items())),
                 f", {len(kd.trials)} trials" if kd.trials else "",
                 f", {len(kd.skipped)} bad metadata lines skipped" if kd.skipped else "")  # fmt: skip
    return sets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare_fleurs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("root", help="FLEURS root (lhotse download fleurs writes <dir>/fleurs)")
    p.add_argument("data", help="where the Kaldi data dirs <data>/<set>/ are written")
    p.add_argument("--langs", default="", help="training languages (empty: all found)")
    p.add_argument("--open-langs", default="", help="held-out languages (open-set test only)")
    p.add_argument(
        "--nj",
        type=int,
        default=NJ,
        help="parallel processes reading audio headers (default: %(default)s)",
    )
    p.add_argument("--skip-bad", type=str2bool, default=False,
                   help="leave out (and count, in <data>/<set>/skipped) bad metadata lines")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> None:
    if args.nj < 1:
        raise ApmError(f"--nj must be at least 1, got {args.nj}")
    prepare(
        args.root, args.data, args.langs.split(), args.open_langs.split(), args.nj, args.skip_bad
    )


if __name__ == "__main__":
    main(build_parser(), run)
