"""Stage 6 back-end: LDA + length-norm + logistic regression (OLR baseline), cosine scoring,
and the network's own classifier outputs, written as OLR matrix score files; the fitted
back-end saved once (`store`), its multiclass logistic-regression calibration
(`calibration`), and the fusion of several systems' scores (`fusion`)."""

from apm.backend.config import BackendConfig, load_backend_config
from apm.backend.models import (
    BACKENDS,
    ClassifierBackend,
    CosineBackend,
    EmbeddingProcessor,
    LogisticBackend,
)
from apm.backend.scoring import fit_backend, load_system_backend, score_system
from apm.backend.store import FittedBackend, load_backend, save_backend

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "ClassifierBackend",
    "CosineBackend",
    "EmbeddingProcessor",
    "FittedBackend",
    "LogisticBackend",
    "fit_backend",
    "load_backend",
    "load_backend_config",
    "load_system_backend",
    "save_backend",
    "score_system",
]
