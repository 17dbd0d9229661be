"""Back-end configuration (conf/backend.yaml), validated with messages naming the key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from apm.backend.models import BACKENDS
from apm.utils import ApmError
from apm.utils.config import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    load_yaml,
    reject_unknown,
)

LDA_IMPLS = ("sklearn", "kaldi")


@dataclass
class BackendConfig:
    """What stage 6 scores with.

    primary: back-end written as `scores/<task>.score` (the one the report tables use).
    backends: all back-ends to run, by their names in `apm.backend.models.BACKENDS`; each
        one other than `primary` is written as `scores/<task>.<name>.score`. `lr`: LDA -> mean subtraction -> length normalisation
        -> multinomial logistic regression on the training x-vectors (OLR baseline), scores are
        log-posteriors; `cosine`: cosine between the processed test x-vector and each
        language's mean processed training x-vector; `classifier`: the network's own language
        outputs (logits.scp).
    lda_dim: LDA output dimension, capped by the x-vector size and, with `lda_impl: sklearn`,
        by (training languages - 1).
    lda_impl: `sklearn` (scikit-learn's LDA, at most languages - 1 dimensions) or `kaldi`
        (Kaldi's `ivector-compute-lda`: whiten the within-class covariance, keep the top
        `lda_dim` eigenvectors of the between-class covariance, so more than languages - 1
        dimensions can be kept, as the OLR baselines' `lda100` does).
    lr_c: inverse L2 strength of the logistic regression.
    lr_max_iter: L-BFGS iterations of the logistic regression.
    lr_class_weight: `balanced` (equal language priors whatever the training counts) or `none`.
    classifier_log_softmax: score the classifier with log-posteriors (true) or raw logits.
    """

    primary: str = "lr"
    backends: list[str] = field(default_factory=lambda: ["lr"])
    lda_dim: int = 100
    lda_impl: str = "sklearn"
    lr_c: float = 1.0
    lr_max_iter: int = 1000
    lr_class_weight: str = "balanced"
    classifier_log_softmax: bool = True

    def validate(self, where: str) -> BackendConfig:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ApmError(
                f"{where}: unknown back-end(s) {unknown}; choose from {', '.join(BACKENDS)}"
            )
        if self.primary not in self.backends:
            raise ApmError(
                f"{where}: primary '{self.primary}' must be one of backends {self.backends}"
            )
        if len(set(self.backends)) != len(self.backends):
            raise ApmError(f"{where}: a back-end is listed twice in backends {self.backends}")
        self.lda_dim = check_int(self.lda_dim, "lda_dim", "", minimum=1, path=where)
        self.lr_max_iter = check_int(self.lr_max_iter, "lr_max_iter", "", minimum=1, path=where)
        self.lr_c = check_number(self.lr_c, "lr_c", "", strict=True, path=where)
        check_choice(self.lda_impl, LDA_IMPLS, "lda_impl", "", path=where)
        check_choice(self.lr_class_weight, ("balanced", "none"), "lr_class_weight", "", path=where)
        check_bool(self.classifier_log_softmax, "classifier_log_softmax", "", path=where)
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
    for key in ("primary", "lda_impl", "lr_class_weight"):
        if key in raw and not isinstance(raw[key], str):
            raise ApmError(f"{path}: '{key}' is {raw[key]!r}; it must be a name")
    if "backends" in raw and not (
        isinstance(raw["backends"], list) and all(isinstance(b, str) for b in raw["backends"])
    ):
        raise ApmError(f"{path}: 'backends' is {raw['backends']!r}; it must be a list of names")
    return BackendConfig(**raw).validate(str(path))
