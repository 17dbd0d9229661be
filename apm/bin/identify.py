"""Identify the language of audio files with a model package (exp/<system>/model).

For each input: the most likely language, its posterior and the top-k languages, as a table
(default) or JSON lines (--format json). Inputs are files (wav, flac, ogg: any sample rate,
resampled to 16 kHz; multi-channel audio is averaged to mono) or the entries of a Kaldi
wav.scp (`<utt> <file>` or `<utt> <command> |`). A bad input gets an error line on stderr
naming it (and a JSON line with "error" in --format json) and the others are still answered;
the exit status is 1 when any input failed.

The posteriors are the package's calibrated ones (stage 6 calibrates the back-end on the dev
sets). The answer is `unknown` when the best posterior is below the threshold. The package's
default threshold was chosen on dev data; only when that data held languages the model does
not know (an open-set dev set) was it checked on unknown languages. package.json says which
(`unknown_threshold_checked_on_unknown_languages`), and otherwise a warning on stderr says
that speech of another language is likely answered with a known one (mini-OLR packages: never
checked). A warning also names every input in which the VAD finds no speech.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from apm.bin.cli import main
from apm.utils import ApmError
from apm.utils.dist import DEVICES
from apm.utils.log import progress

log = logging.getLogger("identify")

WINDOW = 64  # inputs loaded and embedded together


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="identify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", required=True, help="model package directory (exp/<system>/model)")
    p.add_argument("--wav-scp", default=None, help="Kaldi wav.scp: <utt> <file | command |>")
    p.add_argument("--top-k", type=int, default=3, help="languages listed per input")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--unknown-threshold", type=float, default=None,
                   help="answer 'unknown' when the best posterior is below this (default: the "
                   "package's, chosen on dev data, as the description says; 0 = never)")  # fmt: skip
    p.add_argument("--backend", default="", help="back-end of the package (default: its primary)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="auto: CUDA if present")
    p.add_argument("audio", nargs="*", help="audio files")
    return p


def read_wav_scp(path: str) -> list[tuple[str, str]]:
    entries = []
    if os.path.isdir(path):
        raise ApmError(f"{path}: is a directory; --wav-scp takes a Kaldi wav.scp file (give "
                       "audio files in a directory as arguments, e.g. dir/*.wav)")  # fmt: skip
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise ApmError(f"{path}: cannot read ({e.strerror})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise ApmError(f"{path}:{i}: expected '<utt> <file or command |>', got {line!r}")
        entries.append((fields[0], fields[1].strip()))
    return entries


def _table_line(result, top_k: int) -> str:
    top = "  ".join(f"{lang}:{p:.3f}" for lang, p in result.top[:top_k])
    return f"{result.name}\t{result.language}\t{result.posterior:.4f}\t{top}"


def run(args: argparse.Namespace) -> None:
    from apm.infer.identifier import LanguageIdentifier

    if args.top_k < 1:
        raise ApmError(f"--top-k must be at least 1, got {args.top_k}")
    if args.unknown_threshold is not None and not 0 <= args.unknown_threshold <= 1:
        raise ApmError(f"--unknown-threshold must lie in [0, 1], got {args.unknown_threshold}")
    inputs = [(a, a) for a in args.audio]
    if args.wav_scp:
        inputs += read_wav_scp(args.wav_scp)
    if not inputs:
        raise ApmError("no input: give audio files or --wav-scp FILE")
    lid = LanguageIdentifier.from_dir(args.model, args.device, args.backend)
    failed = 0
    out = sys.stdout
    if args.format == "table":
        out.write("# input\tlanguage\tposterior\ttop-k\n")
    bar = progress(total=len(inputs), desc="identify", unit="utt", disable=len(inputs) < 20)
    for first in range(0, len(inputs), WINDOW):
        window = inputs[first : first + WINDOW]
        lines: list[str] = []  # in input order: answers and errors
        prepared, slots = [], []
        for name, source in window:
            try:
                prepared.append(lid.features(lid.load(source), name))
                slots.append((len(lines), name))
                lines.append("")
            except Exception as e:  # any decoder or feature failure is this input's alone
                failed += 1
                why = str(e) if isinstance(e, ApmError) else f"{type(e).__name__}: {e}"
                print(f"identify: ERROR {name}: {why}", file=sys.stderr)
                if args.format == "json":
                    lines.append(json.dumps({"input": name, "error": why}))
        if prepared:
            for (slot, name), (xvec, logits) in zip(
                slots, lid.embed_features(prepared), strict=True
            ):
                result = lid.decide(name, xvec, logits, args.unknown_threshold)
                lines[slot] = (json.dumps(result.to_dict(args.top_k)) if args.format == "json"
                               else _table_line(result, args.top_k))  # fmt: skip
        out.writelines(line + "\n" for line in lines)
        out.flush()
        bar.update(len(window))
    bar.close()
    if failed:
        raise ApmError(f"{failed} of {len(inputs)} inputs failed (see the ERROR lines above)")


def console() -> None:
    """The console entry point (pyproject [project.scripts])."""
    main(build_parser(), run)


if __name__ == "__main__":
    main(build_parser(), run)
