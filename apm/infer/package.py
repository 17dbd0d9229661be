"""A self-contained model package of a trained system (`exp/<system>/model/`).

Everything inference needs, loadable without the recipe's `data/` or `exp/` tree, with no
pickled code:

  model.pt      the network and the language classifier: {"format", "model", "crit" (state
                dicts), "config" (the resolved system config), "meta" (languages,
                num_phones, feat_dim)}, as in `final.pt` (`torch.load(weights_only=True)`)
  backend.json, backend.npz
                the back-end stage 6 fitted and saved (`apm.backend.store`): LDA, mean,
                length norm, logistic regression / cosine means, and the calibration
                learned on the dev sets; copied, never fitted again, so the package scores
                exactly as stage 6
  package.json  format, primary back-end, features (fbank, VAD), CMN and extraction settings,
                the default `unknown_threshold`, where it was chosen and whether it was
                checked on unknown languages, where the package came from
  languages.txt the languages in score column order
  MODEL.md      the model card: training data (the recipe's description of its corpus),
                languages, calibration, the unknown threshold, Cavg/EER per task (stage 7)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from apm.backend.scoring import backend_dir, load_system_backend
from apm.backend.store import FILES as BACKEND_FILES
from apm.backend.store import FittedBackend, load_backend
from apm.features.fbank import FeatureConfig
from apm.metrics.eer import det_curve
from apm.metrics.languages import read_languages
from apm.metrics.scorefile import read_scores
from apm.nnet import checkpoint
from apm.utils import ApmError, atomic_dir, read_kv
from apm.utils.provenance import provenance

log = logging.getLogger(__name__)

FORMAT = "apm-model-package/2"
SAMPLE_RATE = 16000
FILES = ("model.pt", *BACKEND_FILES, "package.json", "languages.txt", "MODEL.md")
REBUILD = ("rebuild the package: python -m apm.bin.package_model --data data --dev-sets "
           "'<dev sets>' exp/<system> (steps/package_model.sh), after stage 6")  # fmt: skip
NOT_CHECKED = (
    "never checked on utterances of languages the model does not know (no open-set dev set): "
    "such an utterance is likely answered with a known language"
)


def choose_unknown_threshold(
    system_dir: Path, data_dir: Path, dev_sets: list[str], fb: FittedBackend
) -> tuple[float, str, bool]:
    """(threshold, how it was chosen, whether it was checked on unknown languages): the
    default `unknown` threshold on the primary back-end's posteriors (calibrated when stage 6
    calibrated it), from the dev sets' stage 6 scores.

    It is the equal-error threshold on the best posterior between the utterances the system
    identifies correctly (kept) and the others (of a language it was not trained on, or
    misidentified: better answered `unknown`). When some dev sets are open-set (their
    `utt2lang` has languages outside languages.txt) only those are used, and the threshold
    is checked on unknown languages; otherwise it is chosen on the closed-set dev sets and
    says it was never checked on unknown languages. 0 (never unknown) when the dev data has
    no answers of one kind.
    """
    if not dev_sets:
        return 0.0, f"0 (never unknown): no dev sets were given; {NOT_CHECKED}", False
    primary, languages = fb.config.primary, fb.languages
    sets = []
    for name in dev_sets:
        scores = read_scores(system_dir / "scores" / fb.config.score_name(name, primary))
        if scores.languages != languages:
            raise ApmError(f"{scores.path}: header is not the languages {languages}")
        utt2lang = read_kv(data_dir / name / "utt2lang")
        truth = [utt2lang.get(u) for u in scores.utts]
        open_set = any(lang not in languages for lang in truth)
        sets.append((name, open_set, fb.posteriors(primary, scores.matrix), truth))
    checked = any(open_set for _, open_set, _, _ in sets)
    used = [x for x in sets if x[1]] if checked else sets
    best = np.concatenate([post.max(axis=1) for _, _, post, _ in used])
    right = np.concatenate([[languages[k] == lang for k, lang in zip(post.argmax(axis=1), truth,
                                                                     strict=True)]
                            for _, _, post, truth in used]).astype(bool)  # fmt: skip
    kind = "open-set dev sets" if checked else "dev sets"
    where = f"{kind} {' '.join(n for n, *_ in used)} ({len(best)} utterances)"
    note = "" if checked else f"; {NOT_CHECKED}"
    if right.all() or not right.any():
        kind = "wrong" if right.all() else "correct"
        return 0.0, f"0 (never unknown): the {where} have no {kind} answers{note}", checked
    threshold, miss, false_accept = equal_error_threshold(best[right], best[~right])
    return (
        threshold,
        (
            f"equal-error threshold on the best posterior of {where}: it turns {100 * miss:.1f}% "
            f"of the correct answers into unknown and keeps {100 * false_accept:.1f}% of the wrong "
            f"ones (misidentified or of an untrained language){note}"
        ),
        checked,
    )


def equal_error_threshold(keep: np.ndarray, reject: np.ndarray) -> tuple[float, float, float]:
    """(t, P(keep < t), P(reject >= t)) for the t among the scores where the two rates are
    closest (the smallest such t)."""
    false_accept, miss = det_curve(keep, reject)  # at each distinct score, then at +inf
    candidates = np.unique(np.concatenate([keep, reject]))
    k = int(np.argmin(np.abs(miss[:-1] - false_accept[:-1])))
    return float(candidates[k]), float(miss[k]), float(false_accept[k])


def _results_table(system_dir: Path) -> str:
    path = system_dir / "results.json"
    if not path.is_file():
        return "No stage 7 results were found when this package was written.\n"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{path} could not be read.\n"
    tasks = results.get("tasks", results) if isinstance(results, dict) else {}
    rows = []
    for task, r in tasks.items():
        if isinstance(r, dict) and "cavg" in r:
            cells = [r["cavg"], r.get("eer", "-"), r.get("accuracy", "-"), r.get("cllr", "-"),
                     r.get("actual_cavg", "-")]  # fmt: skip
            rows.append(f"| {task} | " + " | ".join(str(c) for c in cells) + " |")
    if not rows:
        return f"See {path.name} of the system (no per-task Cavg found in it).\n"
    return ("| task | Cavg | EER % | accuracy % | Cllr (calibrated) | actual Cavg (calibrated) |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")  # fmt: skip


def _model_card(settings: dict, fb: FittedBackend, data_card: str, results: str) -> str:
    model = settings["config"]["model"]
    loss = settings["config"]["loss"]
    languages = settings["languages"]
    calibration = settings["calibration"]
    return f"""# Language identification model: {settings["system"]}

## Training data

{data_card.strip()}

The back-end was trained on set `{fb.info.get("train_set", "?")}` \
({fb.info.get("n_train", 0)} utterances with x-vectors).

## Model

- **Languages** ({len(languages)}): {", ".join(languages)}
- **Network**: multi-task x-vector, {model}; loss {loss}
- **Back-end**: primary `{settings["primary"]}`; available {", ".join(settings["backends"])}
- **Posteriors**: {calibration}
- **Input**: any audio soundfile reads, downmixed to mono and resampled to {SAMPLE_RATE} Hz;
  fbank {settings["features"]["fbank"]}, energy VAD {settings["features"]["vad"]},
  CMN `{settings["cmn"]}`. An input in which the VAD finds no speech gets a warning.
- **Unknown threshold** (default of `identify --unknown-threshold`):
  {settings["unknown_threshold"]:.4f}, {settings["unknown_threshold_source"]}
- {settings["origin"]}

## Results (stage 7)

{results}
## Use

    python -m apm.bin.identify --model DIR audio.wav
    python -c "from apm import LanguageIdentifier; print(LanguageIdentifier.from_dir('DIR').identify('audio.wav'))"
"""


NO_DATA_CARD = (
    "No description of the training corpus was given when this package was written "
    "(`package_model --data-card FILE`): check what the system was trained on before "
    "trusting it on other speech."
)


def write_package(
    system_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    feature_config: FeatureConfig | None = None,
    unknown_threshold: float | None = None,
    command: str = "",
    dev_sets: tuple[str, ...] = (),
    data_card: str | os.PathLike | None = None,
) -> Path:
    """Write the package of `system_dir` (default `<system_dir>/model`); returns its path.

    The back-end is the one stage 6 saved (`exp/<system>/backend/`), copied as it is;
    `feature_config` is the stage 2 configuration (conf/fbank.yaml); `data_card` a markdown
    file describing the training corpus, the first section of MODEL.md. The default
    `unknown` threshold is `unknown_threshold` when given, else chosen on the stage 6 scores
    of `dev_sets` (`choose_unknown_threshold`), else 0 (never unknown).
    """
    system_dir, data_dir = Path(system_dir), Path(data_dir)
    out = Path(out_dir) if out_dir is not None else system_dir / "model"
    feature_config = feature_config or FeatureConfig()
    languages = read_languages(system_dir)
    state = checkpoint.load(system_dir / "final.pt")
    fb = load_system_backend(system_dir)
    if fb.languages != languages:
        raise ApmError(f"{backend_dir(system_dir)}: languages {fb.languages} are not those of "
                       f"{system_dir}/languages.txt; rerun stage 6")  # fmt: skip
    if data_card is not None:
        try:
            card_text = Path(data_card).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ApmError(f"{data_card}: cannot read the data card ({e})") from None
    else:
        card_text = NO_DATA_CARD
    cfg = state["config"]
    if unknown_threshold is not None:
        threshold_source, checked = "given (--unknown-threshold)", False
    else:
        unknown_threshold, threshold_source, checked = choose_unknown_threshold(
            system_dir, data_dir, list(dev_sets), fb
        )
    primary = fb.config.primary
    if primary in fb.calibration:
        calibration = (f"calibrated: multiclass logistic regression (a scale and an offset per "
                       f"language) on the dev sets {' '.join(fb.info.get('dev_sets', []))} "
                       f"({fb.info.get('n_dev_utts', {}).get(primary, '?')} utterances)")  # fmt: skip
    else:
        calibration = ("not calibrated (stage 6 had no dev sets): the softmax of the "
                       "back-end's scores")  # fmt: skip
    settings = {
        "format": FORMAT,
        "system": system_dir.resolve().name,
        "languages": languages,
        "primary": primary,
        "backends": list(fb.models),
        "calibrated_backends": sorted(fb.calibration),
        "calibration": calibration,
        "sample_rate": SAMPLE_RATE,
        "features": {"fbank": dict(feature_config.fbank), "vad": asdict(feature_config.vad)},
        "cmn": cfg["train"]["cmn"],
        "extract": dict(cfg["extract"]),
        "unknown_threshold": float(unknown_threshold),
        "unknown_threshold_source": threshold_source,
        "unknown_threshold_checked_on_unknown_languages": checked,
        "train_set": fb.info.get("train_set"),
        "data_card": str(data_card) if data_card is not None else None,
        "origin": provenance(command),
        "config": cfg,
    }
    with atomic_dir(out) as tmp:
        network = {k: state[k] for k in ("model", "crit", "config", "meta")}
        torch.save({"format": FORMAT, **network}, tmp / "model.pt")
        for name in BACKEND_FILES:
            shutil.copyfile(backend_dir(system_dir) / name, tmp / name)
        (tmp / "package.json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
        (tmp / "languages.txt").write_text("\n".join(languages) + "\n", encoding="utf-8")
        card = _model_card(settings, fb, card_text, _results_table(system_dir))
        (tmp / "MODEL.md").write_text(card, encoding="utf-8")
    log.info("%s: model package of %s (%d languages, back-ends %s)", out, system_dir,
             len(languages), ", ".join(fb.models))  # fmt: skip
    return out


@dataclass
class Package:
    state: dict  # model.pt
    backend: FittedBackend  # backend.json + backend.npz
    settings: dict  # package.json
    languages: list[str]


def load_package(model_dir: str | os.PathLike) -> Package:
    """Read a package written by `write_package` (no pickle: model.pt with
    weights_only=True, the back-end as JSON + numpy arrays)."""
    model_dir = Path(model_dir)
    missing = [f for f in FILES if not (model_dir / f).is_file()]
    if missing:
        raise ApmError(f"{model_dir}: not a model package (missing {', '.join(missing)}); "
                       f"{REBUILD}")  # fmt: skip
    path = model_dir / "package.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApmError(f"{path}: corrupt, not JSON ({e}); {REBUILD}") from None
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        found = settings.get("format") if isinstance(settings, dict) else type(settings).__name__
        raise ApmError(f"{path}: format {found!r}, this code reads {FORMAT!r}; {REBUILD}")
    state = checkpoint.load(model_dir / "model.pt", REBUILD)
    backend = load_backend(model_dir, REBUILD)
    languages = (model_dir / "languages.txt").read_text(encoding="utf-8").split()
    if languages != state["meta"]["languages"] or languages != backend.languages:
        raise ApmError(f"{model_dir}/languages.txt does not match the network's or the "
                       f"back-end's languages; {REBUILD}")  # fmt: skip
    return Package(state, backend, settings, languages)
