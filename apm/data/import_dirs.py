"""Import a corpus given as Kaldi data dirs (one per set under a root), validated.

The OLR recipe's stage 0 with `--olr-root` uses it for a real OLR release; any recipe whose
corpus comes as Kaldi data dirs can.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from apm.data.kaldi_dir import KaldiDir, read_kaldi_dir, write_kaldi_dir
from apm.utils import ApmError

log = logging.getLogger(__name__)


def import_data_dirs(
    root_dir: str | os.PathLike,
    data: str | os.PathLike,
    sets: list[str],
    skip_bad: bool = False,
    scored_sets: list[str] | None = None,
) -> list[KaldiDir]:
    """Validate `<root_dir>/<set>` for every set and write them to `<data>/<set>`.

    The first set is the training set: trials of the other sets may only use its languages
    (an open-set test set may hold utterances of other languages; they can only be
    non-target). `scored_sets` (default: every set after the first) must have trials; the
    other sets (e.g. an enrollment set that trains the back-end) may have none. Relative
    audio paths are looked up under the set's directory, then under `root_dir`, and written
    as `portable_path` gives them (relative to the recipe directory when the file lies
    under it, else absolute). Nothing is written unless every set passes.
    """
    root = Path(root_dir).resolve()
    if not root.is_dir():
        raise ApmError(f"data root {root_dir}: no such directory")
    missing = [s for s in sets if not (root / s).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir() if (p / "wav.scp").is_file())
        raise ApmError(
            f"data root {root}: no data dir for set(s) {' '.join(missing)}; it has: "
            f"{' '.join(found) or 'none'} (pick them with --train-set / --test-sets)"
        )
    if scored_sets is None:
        scored_sets = sets[1:]
    unknown = [s for s in scored_sets if s not in sets]
    if unknown:
        raise ApmError(f"scored set(s) {' '.join(unknown)} are not among the sets to import")
    no_trials = [s for s in scored_sets if not (root / s / "trials").is_file()]
    if no_trials:
        raise ApmError(
            f"data root {root}: test set(s) {' '.join(no_trials)} have no trials file "
            f"(e.g. {root / no_trials[0] / 'trials'}); every test set needs OLR trials, "
            "'<lang> <utt> target|nontarget' per line (or leave the set out of --test-sets)"
        )
    dirs: list[KaldiDir] = []
    for name in sets:
        train_languages = set(dirs[0].languages) if dirs else None
        dirs.append(
            read_kaldi_dir(
                root / name,
                skip_bad=skip_bad,
                audio_bases=[root / name, root],
                train_languages=train_languages,
            )
        )
    if len(dirs[0].languages) < 2:
        raise ApmError(
            f"{root / sets[0]}: the training set has {len(dirs[0].languages)} language(s) "
            f"({' '.join(dirs[0].languages)}) left; language recognition needs at least 2"
        )
    for name, kd in zip(sets, dirs, strict=True):
        write_kaldi_dir(kd, Path(data) / name)
        trials = f", {len(kd.trials)} trials" if kd.trials is not None else ""
        log.info(
            "%s: %d utterances, %d languages, %d speakers%s, %d skipped -> %s",
            name,
            len(kd.utt2lang),
            len(kd.languages),
            len(kd.speakers),
            trials,
            len(kd.skipped),
            Path(data) / name,
        )
    return dirs
