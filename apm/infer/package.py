"""A self-contained model package of a trained system (`exp/<system>/model/`).

Everything inference needs, loadable without the recipe's `data/` or `exp/` tree and with
`torch.load(weights_only=True)` (tensors and plain values only, no pickled code):

  model.pt      the network and the language classifier: {"format", "model", "crit" (state
                dicts), "config" (the resolved system config), "meta" (languages,
                num_phones, feat_dim)}, as in `final.pt`
  backend.pt    the fitted back-ends of stage 6 as float64 tensors (see `Backend`)
  package.json  format, primary back-end, features (fbank, VAD), CMN and extraction settings,
                the default `unknown_threshold`, the back-end config, where it came from
  languages.txt the languages in score column order
  MODEL.md      a short model card: training data, languages, Cavg/EER per task (stage 7)

The back-ends are fitted again here from the same x-vectors and configuration as stage 6
(`apm.backend.scoring.training_data`, `scores/backend.yaml`); sklearn's fits are
deterministic, and `write_package` checks that the stored arrays reproduce the fitted models.
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
import yaml

from apm.backend.config import BackendConfig
from apm.backend.models import CosineBackend, EmbeddingProcessor, LogisticBackend
from apm.backend.scoring import training_data
from apm.features.fbank import FeatureConfig
from apm.metrics.eer import det_curve
from apm.metrics.languages import read_languages
from apm.metrics.scorefile import read_scores
from apm.nnet import checkpoint
from apm.utils import ApmError, read_kv
from apm.utils.provenance import provenance

log = logging.getLogger(__name__)

FORMAT = "apm-model-package/1"
SAMPLE_RATE = 16000
FILES = ("model.pt", "backend.pt", "package.json", "languages.txt", "MODEL.md")


@dataclass
class Backend:
    """One back-end as arrays, applied exactly as `apm.backend.models` does.

    kind `lr`: z = lennorm(x @ lda_matrix + lda_offset) (LDA, minus the training mean, scaled
    to norm sqrt(dim)); scores = log_softmax(z @ weight.T + bias) (sklearn's
    predict_log_proba, a two-language model written with a zero first row). kind `cosine`:
    scores = unit(z) @ means.T. kind `classifier`: scores = log_softmax(logits) (or the raw
    logits when `log_softmax` is false). `lr` and `cosine` read the x-vector, `classifier`
    the network's language outputs.
    """

    kind: str
    arrays: dict[str, np.ndarray]
    log_softmax: bool = True

    def scores(self, xvectors: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """[N, languages] float64 scores, as stage 6 writes them."""
        a = self.arrays
        if self.kind == "classifier":
            logits = np.asarray(logits, dtype=np.float64)
            return _log_softmax(logits) if self.log_softmax else logits
        z = np.asarray(xvectors, dtype=np.float64) @ a["lda_matrix"] + a["lda_offset"]
        z = z * (np.sqrt(z.shape[1]) / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12))
        if self.kind == "lr":
            return _log_softmax(z @ a["weight"].T + a["bias"])
        return _unit(z) @ a["means"].T

    def posteriors(self, scores: np.ndarray) -> np.ndarray:
        """Language posteriors: exp of the log-posteriors of `lr` and the log-softmax
        classifier; softmax of the cosine scores and raw logits."""
        if self.kind == "lr" or (self.kind == "classifier" and self.log_softmax):
            return np.exp(scores)
        return np.exp(_log_softmax(scores))

    def to_state(self) -> dict:
        return {
            "kind": self.kind,
            "log_softmax": self.log_softmax,
            "arrays": {
                k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.arrays.items()
            },
        }

    @classmethod
    def from_state(cls, state: dict) -> Backend:
        arrays = {k: v.numpy().astype(np.float64) for k, v in state["arrays"].items()}
        return cls(state["kind"], arrays, bool(state["log_softmax"]))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _affine(transform, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(matrix [dim, k], offset [k]) of an affine map given as a function of [n, dim] rows."""
    offset = np.asarray(transform(np.zeros((1, dim))), dtype=np.float64)[0]
    matrix = np.asarray(transform(np.eye(dim)), dtype=np.float64) - offset
    return matrix, offset


def fit_backends(
    x: np.ndarray, labels: np.ndarray, conf: BackendConfig, num_languages: int
) -> dict[str, Backend]:
    """Fit the back-ends of `conf` as stage 6 does and return them as arrays; checks that the
    arrays score the training x-vectors as the fitted models do."""
    out: dict[str, Backend] = {}
    if "classifier" in conf.backends:
        out["classifier"] = Backend("classifier", {}, conf.classifier_log_softmax)
    if not any(b in conf.backends for b in ("lr", "cosine")):
        return out
    process = EmbeddingProcessor(conf.lda_dim, conf.lda_impl).fit(x, labels)
    z = process(x)
    matrix, offset = _affine(lambda v: process.lda.transform(v) - process.mean, x.shape[1])
    projection = {"lda_matrix": matrix, "lda_offset": offset}
    fitted = {}
    if "lr" in conf.backends:
        lr = LogisticBackend(conf.lr_c, conf.lr_max_iter, conf.lr_class_weight).fit(z, labels)
        weight, bias = lr.model.coef_.astype(np.float64), lr.model.intercept_.astype(np.float64)
        if weight.shape[0] == 1:  # sklearn's binary model: p(class 1) = sigmoid(w z + b)
            weight = np.vstack([np.zeros_like(weight), weight])
            bias = np.concatenate([[0.0], bias])
        out["lr"] = Backend("lr", {**projection, "weight": weight, "bias": bias})
        fitted["lr"] = lr
    if "cosine" in conf.backends:
        cosine = CosineBackend().fit(z, labels)
        out["cosine"] = Backend("cosine", {**projection, "means": cosine.means.astype(np.float64)})
        fitted["cosine"] = cosine
    dummy = np.zeros((len(x), num_languages))
    for name, model in fitted.items():
        diff = np.abs(out[name].scores(x, dummy) - model(z)).max()
        if not diff < 1e-6:
            raise ApmError(f"back-end {name}: stored arrays differ from the fitted model by {diff}")
    return out


def choose_unknown_threshold(
    system_dir: Path, data_dir: Path, dev_sets: list[str], backend: Backend, languages: list[str]
) -> tuple[float, str]:
    """The default `unknown` threshold from the dev sets' stage 6 scores of `backend` (the
    primary): the equal-error threshold on the best posterior between the utterances the
    system identifies correctly (kept) and the others (misidentified, or of a language it
    was not trained on: better answered `unknown`). (0.0, why) when the dev data has none of
    one kind."""
    if not dev_sets:
        return 0.0, "0 (never unknown): no dev sets were given"
    conf = BackendConfig(primary=backend.kind)
    best, right = [], []
    for name in dev_sets:
        scores = read_scores(system_dir / "scores" / conf.score_name(name, backend.kind))
        if scores.languages != languages:
            raise ApmError(f"{scores.path}: header is not the languages {languages}")
        utt2lang = read_kv(data_dir / name / "utt2lang")
        post = backend.posteriors(scores.matrix)
        best.append(post.max(axis=1))
        right.append([languages[k] == utt2lang.get(u)
                      for u, k in zip(scores.utts, post.argmax(axis=1), strict=True)])  # fmt: skip
    best_arr, right_arr = np.concatenate(best), np.concatenate(right).astype(bool)
    where = f"dev sets {' '.join(dev_sets)} ({len(best_arr)} utterances)"
    if right_arr.all() or not right_arr.any():
        kind = "wrong" if right_arr.all() else "correct"
        return 0.0, f"0 (never unknown): the {where} have no {kind} answers"
    threshold, miss, false_accept = equal_error_threshold(best_arr[right_arr], best_arr[~right_arr])
    return threshold, (
        f"equal-error threshold on the best posterior of {where}: it turns {100 * miss:.1f}% "
        f"of the correct answers into unknown and keeps {100 * false_accept:.1f}% of the wrong "
        "ones (misidentified or of an untrained language)"
    )


def equal_error_threshold(keep: np.ndarray, reject: np.ndarray) -> tuple[float, float, float]:
    """(t, P(keep < t), P(reject >= t)) for the t among the scores where the two rates are
    closest (the smallest such t)."""
    false_accept, miss = det_curve(keep, reject)  # at each distinct score, then at +inf
    candidates = np.unique(np.concatenate([keep, reject]))
    k = int(np.argmin(np.abs(miss[:-1] - false_accept[:-1])))
    return float(candidates[k]), float(miss[k]), float(false_accept[k])


def _backend_config(system_dir: Path, conf_path: str | os.PathLike | None) -> BackendConfig:
    """The back-end configuration stage 6 recorded (`scores/backend.yaml`), else `conf_path`."""
    from apm.backend.config import load_backend_config

    recorded = system_dir / "scores" / "backend.yaml"
    if recorded.is_file():
        raw = yaml.safe_load(recorded.read_text(encoding="utf-8"))
        return BackendConfig(**raw).validate(str(recorded))
    if conf_path is None:
        raise ApmError(f"{recorded}: not found; run stage 6 (scoring) first or pass --conf")
    return load_backend_config(conf_path)


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
            cells = [r["cavg"], r.get("eer", "-"), r.get("accuracy", "-")]
            rows.append(f"| {task} | " + " | ".join(str(c) for c in cells) + " |")
    if not rows:
        return f"See {path.name} of the system (no per-task Cavg found in it).\n"
    return ("| task | Cavg | EER % | accuracy % |\n|---|---|---|---|\n" + "\n".join(rows)
            + "\n")  # fmt: skip


def _model_card(
    system: str, languages: list[str], train_set: str, n_train: int, settings: dict,
    results: str, origin: str,
) -> str:  # fmt: skip
    model = settings["config"]["model"]
    loss = settings["config"]["loss"]
    return f"""# Language identification model: {system}

- **Languages** ({len(languages)}): {", ".join(languages)}
- **Training data**: set `{train_set}`, {n_train} utterances with x-vectors used by the back-end
- **Network**: multi-task x-vector, {model}; loss {loss}
- **Back-end**: primary `{settings["primary"]}`; available {", ".join(settings["backends"])}
- **Input**: any audio soundfile reads, downmixed to mono and resampled to {SAMPLE_RATE} Hz;
  fbank {settings["features"]["fbank"]}, energy VAD {settings["features"]["vad"]},
  CMN `{settings["cmn"]}`
- **Unknown threshold** (default of `identify --unknown-threshold`):
  {settings["unknown_threshold"]:.4f}, {settings["unknown_threshold_source"]}
- {origin}

## Results (stage 7)

{results}
## Use

    python -m apm.bin.identify --model DIR audio.wav
    python -c "from apm import LanguageIdentifier; print(LanguageIdentifier.from_dir('DIR').identify('audio.wav'))"
"""


def write_package(
    system_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    train_set: str,
    out_dir: str | os.PathLike | None = None,
    feature_config: FeatureConfig | None = None,
    backend_conf: str | os.PathLike | None = None,
    unknown_threshold: float | None = None,
    command: str = "",
    dev_sets: tuple[str, ...] = (),
) -> Path:
    """Write the package of `system_dir` (default `<system_dir>/model`); returns its path.

    `train_set` is the set the stage 6 back-ends were trained on (its `--backend-train-set`,
    else `--train-set`); `feature_config` the stage 2 configuration (conf/fbank.yaml).
    The default `unknown` threshold is `unknown_threshold` when given, else chosen on the
    stage 6 scores of `dev_sets` (`choose_unknown_threshold`), else 0 (never unknown).
    """
    system_dir, data_dir = Path(system_dir), Path(data_dir)
    out = Path(out_dir) if out_dir is not None else system_dir / "model"
    feature_config = feature_config or FeatureConfig()
    languages = read_languages(system_dir)
    state = checkpoint.load(system_dir / "final.pt")
    conf = _backend_config(system_dir, backend_conf)
    n_train = 0
    x = labels = None
    if any(b in conf.backends for b in ("lr", "cosine")):
        x, labels = training_data(system_dir, data_dir, train_set, languages)
        n_train = len(x)
    backends = fit_backends(x, labels, conf, len(languages))
    cfg = state["config"]
    if unknown_threshold is not None:
        threshold_source = "given (--unknown-threshold)"
    else:
        unknown_threshold, threshold_source = choose_unknown_threshold(
            system_dir, data_dir, list(dev_sets), backends[conf.primary], languages
        )
    settings = {
        "format": FORMAT,
        "system": system_dir.resolve().name,
        "languages": languages,
        "primary": conf.primary,
        "backends": sorted(backends),
        "sample_rate": SAMPLE_RATE,
        "features": {"fbank": dict(feature_config.fbank), "vad": asdict(feature_config.vad)},
        "cmn": cfg["train"]["cmn"],
        "extract": dict(cfg["extract"]),
        "unknown_threshold": float(unknown_threshold),
        "unknown_threshold_source": threshold_source,
        "backend_config": asdict(conf),
        "train_set": train_set,
        "origin": provenance(command),
        "config": cfg,
    }
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    network = {k: state[k] for k in ("model", "crit", "config", "meta")}
    torch.save({"format": FORMAT, **network}, tmp / "model.pt")
    torch.save({"format": FORMAT, **{k: b.to_state() for k, b in backends.items()}},
               tmp / "backend.pt")  # fmt: skip
    (tmp / "package.json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    (tmp / "languages.txt").write_text("\n".join(languages) + "\n", encoding="utf-8")
    card = _model_card(settings["system"], languages, train_set, n_train, settings,
                       _results_table(system_dir), settings["origin"])  # fmt: skip
    (tmp / "MODEL.md").write_text(card, encoding="utf-8")
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    log.info("%s: model package of %s (%d languages, back-ends %s)", out, system_dir,
             len(languages), ", ".join(sorted(backends)))  # fmt: skip
    return out


@dataclass
class Package:
    state: dict  # model.pt
    backends: dict[str, Backend]
    settings: dict  # package.json
    languages: list[str]


def load_package(model_dir: str | os.PathLike) -> Package:
    """Read a package written by `write_package` (tensors only: weights_only=True)."""
    model_dir = Path(model_dir)
    missing = [f for f in FILES if not (model_dir / f).is_file()]
    if missing:
        raise ApmError(f"{model_dir}: not a model package (missing {', '.join(missing)}); "
                       "write one with python -m apm.bin.package_model")  # fmt: skip
    settings = json.loads((model_dir / "package.json").read_text(encoding="utf-8"))
    if settings.get("format") != FORMAT:
        raise ApmError(f"{model_dir}/package.json: format {settings.get('format')!r}, "
                       f"this code reads {FORMAT!r}")  # fmt: skip
    rebuild = ("rebuild the package: steps/package_model.sh --data data --train-set train "
               f"--dev-sets 'dev_full dev_short' {model_dir.parent}")  # fmt: skip
    state = checkpoint.load(model_dir / "model.pt", rebuild)
    try:
        raw = torch.load(model_dir / "backend.pt", map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:
        raise ApmError(f"{model_dir}: unreadable package file ({e})") from e
    backends = {k: Backend.from_state(v) for k, v in raw.items() if k != "format"}
    languages = (model_dir / "languages.txt").read_text(encoding="utf-8").split()
    if languages != state["meta"]["languages"]:
        raise ApmError(f"{model_dir}/languages.txt does not match the network's languages")
    return Package(state, backends, settings, languages)
