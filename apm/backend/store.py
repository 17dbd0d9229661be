"""The fitted back-end of stage 6, saved once and loaded by every scorer (no pickle).

Stage 6 fits the back-ends of conf/backend.yaml (LDA, mean, length norm, logistic regression,
cosine means) and their calibrations (`apm.backend.calibration`, on the dev sets) and saves
them in a directory, `exp/<system>/backend/`, written atomically as a whole:

  backend.json  format, languages (score column order), the back-end configuration, the
                training and dev sets, which back-ends are calibrated, the names and shapes
                of the arrays, and the sha256 of backend.npz
  backend.npz   float64 arrays only (`numpy.load(allow_pickle=False)`): `processor.<key>`
                (`EmbeddingProcessor.state`), `<backend>.<key>` (each model's `state`),
                `calibration.<backend>.{scales,offsets}`

Stage 6 scores its tasks with the loaded copy, and the model package (`apm.infer.package`)
ships these two files, so both score with the same arrays and the same code: nothing is
fitted again. A missing, corrupt or mismatched file is an `ApmError` naming it and saying
how to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import softmax

from apm.backend.calibration import Affine
from apm.backend.config import BackendConfig
from apm.backend.models import BACKENDS, BackendModel, EmbeddingProcessor
from apm.utils import ApmError, atomic_dir

FORMAT = "apm-backend/1"
JSON = "backend.json"
NPZ = "backend.npz"
FILES = (JSON, NPZ)


@dataclass
class FittedBackend:
    """The back-ends of one system, fitted (see the module docstring)."""

    config: BackendConfig
    languages: list[str]
    processor: EmbeddingProcessor | None  # None when no back-end reads x-vectors
    models: dict[str, BackendModel]  # in config.backends order
    calibration: dict[str, Affine] = field(default_factory=dict)  # back-end -> calibration
    info: dict = field(default_factory=dict)  # train_set, n_train, dev_sets, n_dev_utts

    def input(self, name: str) -> str:
        """What back-end `name` scores: `xvector` or `logits`."""
        return self.models[name].input

    def scores(self, name: str, vectors: np.ndarray) -> np.ndarray:
        """[N, languages] scores of back-end `name` (what stage 6 writes) for x-vectors or
        network language outputs, as `input(name)` says."""
        vectors = np.asarray(vectors, dtype=np.float64)
        model = self.models[name]
        if model.input == "xvector":
            return model(self.processor(vectors))
        if vectors.shape[1] != len(self.languages):
            raise ApmError(f"{vectors.shape[1]} language outputs per utterance but "
                           f"{len(self.languages)} languages in the back-end")  # fmt: skip
        return model(vectors)

    def calibrated(self, name: str, scores: np.ndarray) -> np.ndarray | None:
        """Calibrated log-posteriors (equal priors) of `scores`, or None if `name` has no
        calibration (stage 6 ran without dev sets)."""
        cal = self.calibration.get(name)
        return None if cal is None else cal([scores])

    def posteriors(self, name: str, scores: np.ndarray) -> np.ndarray:
        """Language posteriors: the calibrated ones when there is a calibration, else the
        softmax of the scores (the back-end's own posteriors for log-posterior scores)."""
        cal = self.calibrated(name, scores)
        return np.exp(cal) if cal is not None else softmax(np.asarray(scores, np.float64), axis=1)


def _arrays(fb: FittedBackend) -> dict[str, np.ndarray]:
    out = {}
    if fb.processor is not None:
        out |= {f"processor.{k}": v for k, v in fb.processor.state().items()}
    for name, model in fb.models.items():
        out |= {f"{name}.{k}": v for k, v in model.state().items()}
    for name, cal in fb.calibration.items():
        out |= {f"calibration.{name}.{k}": v for k, v in cal.state().items()}
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def save_backend(directory: str | os.PathLike, fb: FittedBackend) -> Path:
    """Write `fb` to `directory` (backend.json + backend.npz), replacing it atomically."""
    directory = Path(directory)
    arrays = _arrays(fb)
    with atomic_dir(directory) as tmp:
        with open(tmp / NPZ, "wb") as f:
            np.savez(f, **arrays)
        meta = {
            "format": FORMAT,
            "languages": fb.languages,
            "config": asdict(fb.config),
            "backends": list(fb.models),
            "calibrated": sorted(fb.calibration),
            **fb.info,
            "arrays": {k: list(v.shape) for k, v in arrays.items()},
            "npz_sha256": _sha256(tmp / NPZ),
        }
        (tmp / JSON).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return directory


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_backend_json(directory: str | os.PathLike, rebuild: str) -> dict:
    """backend.json of `directory`; a missing or corrupt one is an ApmError ending in
    `rebuild` (how to write it again)."""
    path = Path(directory) / JSON
    if not path.is_file():
        raise ApmError(f"{path}: not found; {rebuild}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApmError(f"{path}: corrupt, not JSON ({e}); {rebuild}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ApmError(f"{path}: format {found!r}, this code reads {FORMAT!r}; {rebuild}")
    return meta


def load_backend(directory: str | os.PathLike, rebuild: str) -> FittedBackend:
    """The back-end saved in `directory` by `save_backend`. Any problem with its files is an
    ApmError naming the file and ending in `rebuild`."""
    directory = Path(directory)
    meta = read_backend_json(directory, rebuild)
    path, npz = directory / JSON, directory / NPZ
    if not npz.is_file():
        raise ApmError(f"{npz}: not found; {rebuild}")
    if _sha256(npz) != meta.get("npz_sha256"):
        raise ApmError(f"{npz}: does not match {path} (its sha256 differs: corrupt, or the "
                       f"two files come from different runs); {rebuild}")  # fmt: skip
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ApmError(f"{npz}: cannot be read ({e}); {rebuild}") from None
    try:
        conf = BackendConfig(**meta["config"]).validate(str(path))
        languages = [str(lang) for lang in meta["languages"]]

        def group(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        models = {}
        for name in meta["backends"]:
            models[name] = BACKENDS[name].from_config(conf).load_state(group(f"{name}."))
        processor = None
        if any(m.input == "xvector" for m in models.values()):
            processor = EmbeddingProcessor(conf.lda_dim, conf.lda_impl).load_state(
                group("processor.")
            )
        calibration = {n: Affine.from_state(group(f"calibration.{n}.")) for n in meta["calibrated"]}
    except (KeyError, TypeError, ValueError) as e:
        raise ApmError(f"{path}: inconsistent with {npz.name} or incomplete (missing or bad "
                       f"{e}); {rebuild}") from None  # fmt: skip
    info = {k: meta[k] for k in ("train_set", "n_train", "dev_sets", "n_dev_utts") if k in meta}
    return FittedBackend(conf, languages, processor, models, calibration, info)
