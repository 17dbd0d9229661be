"""Stage 6 back-end: LDA + length-norm + logistic regression (OLR baseline), cosine scoring,
and the network's own classifier outputs, written as OLR matrix score files."""

from apm.backend.config import BackendConfig, load_backend_config
from apm.backend.models import (
    BACKENDS,
    ClassifierBackend,
    CosineBackend,
    EmbeddingProcessor,
    LogisticBackend,
)
from apm.backend.scoring import score_system

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "ClassifierBackend",
    "CosineBackend",
    "EmbeddingProcessor",
    "LogisticBackend",
    "load_backend_config",
    "score_system",
]
