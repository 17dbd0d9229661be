#!/usr/bin/env python3
"""A miniature FLEURS, synthesized with eSpeak NG, in the layout lhotse's downloader writes:

  <root>/<lang>/{train,dev,test}/<file id>.wav        16 kHz 16-bit mono
  <root>/<lang>/.<lang>_completed                     the downloader's completion marker
  <root>/metadata/<lang>/{train,dev,test}.tsv         id, file, raw text, text, chars,
                                                      samples, gender (tab-separated)

For tests and smoke runs of egs/fleurs without downloading (`./run.sh --fleurs-root <root>`).
Languages are FLEURS codes; the eSpeak NG voice is the code's first part (id_id -> id) or is
given as CODE=VOICE. Each split has speakers of its own (eSpeak voice variant x pitch x rate x
vocal-tract warp, disjoint between splits, as in mini-OLR); each speaker of a split reads the
same prompt ids, so lhotse numbers the readings of a prompt 1, 2, ... as FLEURS does. The
same seed and options give the same bytes; a rerun with them does nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

# The eSpeak NG synthesis is mini-OLR's (egs/olr/local/mini_olr): a test fixture tool reuses
# the other recipe's corpus code rather than copying it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "olr/local"))

from mini_olr.build import build_vocabularies, render_all  # noqa: E402
from mini_olr.espeak import available_voices  # noqa: E402
from mini_olr.languages import Language, resolve  # noqa: E402
from mini_olr.spec import SetSpec, Utterance, make_speakers, stable_seed  # noqa: E402

from apm.bin.cli import main  # noqa: E402
from apm.utils import ApmError, atomic_write  # noqa: E402
from apm.utils.defaults import NJ

SPLITS = {"train": "tr", "dev": "dv", "test": "te"}  # split -> speaker pool (mini_olr.spec)
PROMPT_BASE = {"train": 1, "dev": 5001, "test": 9001}  # disjoint prompt ids per split
SPECS = {  # utterance duration range (s) and channel: light reverb/noise in train, clean else
    "train": SetSpec(2.0, 5.0, "train"),
    "dev": SetSpec(2.0, 5.0, "clean"),
    "test": SetSpec(2.0, 5.0, "clean"),
}
MAX_WORDS = 300  # vocabulary per language
STAMP = ".mini_fleurs.json"
PUNCTUATION = re.compile(r"[^\w\s]")

log = logging.getLogger("make_mini_fleurs")


def fleurs_languages(codes: list[str]) -> list[Language]:
    """Language objects of FLEURS `codes` (CODE or CODE=VOICE)."""
    voices = set(available_voices())
    specs = []
    for code in codes:
        if "=" not in code:
            voice = code.split("_")[0]
            if voice not in voices:
                raise ApmError(
                    f"language {code}: eSpeak NG has no voice '{voice}'; give {code}=VOICE "
                    f"with one of: {' '.join(sorted(voices))}"
                )
            code = f"{code}={voice}"
        specs.append(code)
    return resolve(specs, {}, "FLEURS")


def plan(langs: list[Language], speakers: dict[str, int], utts: int, seed: int) -> list[Utterance]:
    """Every utterance: per language and split, `speakers[split]` speakers reading `utts`
    prompts each. `Utterance.utt` is the FLEURS-like numeric file id."""
    out = []
    for lang in langs:
        for split, role in SPLITS.items():
            for spk in make_speakers(seed, lang.code, role, speakers[split]):
                for i in range(utts):
                    key = (seed, "mini_fleurs", split, lang.code, spk.id, i)
                    out.append(Utterance(utt=str(stable_seed(*key, "file")), set=split,
                                         language=lang, speaker=spk, seed=stable_seed(*key),
                                         spec=SPECS[split]))  # fmt: skip
    return out


def tsv_line(u: Utterance, prompt: int, text: str, num_samples: int) -> str:
    """One metadata line as lhotse's downloader writes it."""
    transcription = " ".join(PUNCTUATION.sub(" ", text).lower().split())
    chars = " ".join("|".join(transcription.split())) + " |"
    gender = "FEMALE" if u.speaker.pitch >= 50 else "MALE"  # eSpeak base pitch 0-100
    fields = [str(prompt), f"{u.utt}.wav", text, transcription, chars, str(num_samples), gender]
    return "\t".join(fields) + "\n"


def write_layout(staging: Path, utts: list[Utterance], rendered: dict) -> None:
    """Move the rendered wavs (staging/wav/<split>/<lang>/) into <lang>/<split>/ and write the
    metadata in plan order (prompt i of a split is each speaker's i-th reading)."""
    lines: dict[tuple[str, str], list[str]] = {}
    index: dict[tuple[str, str, str], int] = {}
    for u in utts:
        split, code = u.set, u.language.code
        i = index.get((split, code, u.speaker.id), 0)
        index[(split, code, u.speaker.id)] = i + 1
        r = rendered[u.utt]
        lines.setdefault((code, split), []).append(
            tsv_line(u, PROMPT_BASE[split] + i, r.text, r.num_samples)
        )
        dest = staging / code / split / f"{u.utt}.wav"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / "wav" / split / code / f"{u.utt}.wav", dest)
    for (code, split), text in lines.items():
        meta = staging / "metadata" / code
        meta.mkdir(parents=True, exist_ok=True)
        (meta / f"{split}.tsv").write_text("".join(text), encoding="utf-8")
        (staging / code / f".{code}_completed").touch()
    shutil.rmtree(staging / "wav")


def make_mini_fleurs(
    root: str | os.PathLike,
    langs: list[str],
    speakers: dict[str, int],
    utts: int,
    seed: int = 777,
    nj: int = 2,
) -> Path:
    """Synthesize the miniature FLEURS under `root` (see the module doc); returns `root`.
    The corpus appears all at once: it is built next to `root` and moved into place."""
    if nj < 1 or utts < 1 or min(speakers.values()) < 1:
        raise ApmError(
            f"--nj, --utts and speaker counts must be >= 1, got {nj}, {utts}, {speakers}"
        )
    root = Path(root).absolute()
    stamp = {"langs": langs, "speakers": speakers, "utts": utts, "seed": seed}
    if (root / STAMP).is_file():
        if json.loads((root / STAMP).read_text()) == stamp:
            log.info("mini FLEURS with these options already in %s; skipping", root)
            return root
    elif root.exists() and any(root.iterdir()):
        raise ApmError(f"{root}: exists and is not a mini FLEURS; give an empty or new directory")
    languages = fleurs_languages(langs)
    staging = root.with_name(root.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    utterances = plan(languages, speakers, utts, seed)
    vocabs = build_vocabularies(languages, MAX_WORDS, nj)
    rendered = {r.utt: r for r in render_all(utterances, vocabs, seed, staging / "wav", nj)}
    write_layout(staging, utterances, rendered)
    with atomic_write(staging / STAMP) as f:
        json.dump(stamp, f)
    if root.exists():
        shutil.rmtree(root)
    os.replace(staging, root)
    log.info("mini FLEURS: %d utterances of %s in %s", len(utterances), " ".join(langs), root)
    return root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_mini_fleurs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("root", help="output FLEURS root (as --fleurs-root of egs/fleurs/run.sh)")
    p.add_argument("--langs", default="id_id ms_my ru_ru uk_ua",
                   help="FLEURS codes, CODE=VOICE for an eSpeak voice other than CODE's first part")  # fmt: skip
    p.add_argument("--train-speakers", type=int, default=3, help="speakers per language")
    p.add_argument("--dev-speakers", type=int, default=2, help="speakers per language")
    p.add_argument("--test-speakers", type=int, default=2, help="speakers per language")
    p.add_argument("--utts", type=int, default=4, help="utterances per speaker")
    p.add_argument("--seed", type=int, default=777, help="random seed (same seed: same bytes)")
    p.add_argument(
        "--nj", type=int, default=NJ, help="parallel synthesis processes (default: %(default)s)"
    )
    return p


def run(args: argparse.Namespace) -> None:
    speakers = {"train": args.train_speakers, "dev": args.dev_speakers, "test": args.test_speakers}
    make_mini_fleurs(args.root, args.langs.split(), speakers, args.utts, args.seed, args.nj)


if __name__ == "__main__":
    main(build_parser(), run)
