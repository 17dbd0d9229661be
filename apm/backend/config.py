"""Back-end configuration (conf/backend.yaml), validated with messages naming the key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from apm.utils import ApmError
from apm.utils.config import load_yaml, reject_unknown

BACKENDS = ("lr", "cosine", "classifier")


@dataclass
class BackendConfig:
    """What stage 6 scores with.

    primary: back-end written as `scores/<task>.score` (the one the report tables use).
    backends: all back-ends to run; each one other than `primary` is written as
        `scores/<task>.<name>.score`. `lr`: LDA -> mean subtraction -> length normalisation
        -> multinomial logistic regression on the training x-vectors (OLR baseline), scores are
        log-posteriors; `cosine`: cosine between the processed test x-vector and each
        language's mean processed training x-vector; `classifier`: the network's own language
        outputs (logits.scp).
    lda_dim: LDA output dimension, capped by (training languages - 1) and the x-vector size.
    lr_c: inverse L2 strength of the logistic regression.
    lr_max_iter: L-BFGS iterations of the logistic regression.
    lr_class_weight: `balanced` (equal language priors whatever the training counts) or `none`.
    classifier_log_softmax: score the classifier with log-posteriors (true) or raw logits.
    """

    primary: str = "lr"
    backends: list[str] = field(default_factory=lambda: ["lr"])
    lda_dim: int = 100
    lr_c: float = 1.0
    lr_max_iter: int = 1000
    lr_class_weight: str = "balanced"
    classifier_log_softmax: bool = True

    def validate(self, where: str) -> BackendConfig:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ApmError(f"{where}: unknown back-end(s) {unknown}; choose from {list(BACKENDS)}")
        if self.primary not in self.backends:
            raise ApmError(
                f"{where}: primary '{self.primary}' must be one of backends {self.backends}"
            )
        if len(set(self.backends)) != len(self.backends):
            raise ApmError(f"{where}: a back-end is listed twice in backends {self.backends}")
        if self.lda_dim < 1 or self.lr_c <= 0 or self.lr_max_iter < 1:
            raise ApmError(f"{where}: lda_dim, lr_c and lr_max_iter must be positive")
        if self.lr_class_weight not in ("balanced", "none"):
            raise ApmError(f"{where}: lr_class_weight must be 'balanced' or 'none'")
        return self

    def score_name(self, task: str, backend: str) -> str:
        """File name of a task's scores for `backend` under `scores/`."""
        return f"{task}.score" if backend == self.primary else f"{task}.{backend}.score"


def load_backend_config(path: str | os.PathLike | None) -> BackendConfig:
    """Read a back-end YAML file; None gives the defaults."""
    if path is None:
        return BackendConfig()
    raw = load_yaml(path, "back-end configuration")
    reject_unknown(raw, (f.name for f in fields(BackendConfig)), str(path))
    if isinstance(raw.get("backends"), str):
        raw["backends"] = [raw["backends"]]
    defaults = BackendConfig()
    for key, value in raw.items():
        expected = type(getattr(defaults, key))
        if expected is float and type(value) is int:
            raw[key] = float(value)
        elif type(value) is not expected:
            raise ApmError(f"{path}: option '{key}' must be a {expected.__name__}, got {value!r}")
    return BackendConfig(**raw).validate(str(path))
