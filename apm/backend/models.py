"""The back-end models: embedding processing, logistic regression, cosine, classifier outputs.

All scorers return a (utterances x languages) float64 matrix with columns in the order of the
training languages (`languages.txt`), the class order used for the labels 0..K-1.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.special import log_softmax
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression

from apm.utils import ApmError

log = logging.getLogger(__name__)


class EmbeddingProcessor:
    """LDA -> subtract the training mean -> length normalisation.

    Vectors are scaled to norm sqrt(dim) as Kaldi's `ivector-normalize-length` does, so the
    logistic regression's L2 strength means the same whatever the LDA dimension.
    """

    def __init__(self, lda_dim: int) -> None:
        self.lda_dim = lda_dim

    def fit(self, x: np.ndarray, labels: np.ndarray) -> EmbeddingProcessor:
        n_class = len(np.unique(labels))
        if n_class < 2:
            raise ApmError("the back-end needs training x-vectors of at least 2 languages")
        dim = min(self.lda_dim, n_class - 1, x.shape[1])
        if dim < self.lda_dim:
            log.info(
                "LDA dimension %d capped to %d (languages - 1, x-vector size)", self.lda_dim, dim
            )
        self.lda = LinearDiscriminantAnalysis(n_components=dim, solver="svd")
        projected = self.lda.fit(x, labels).transform(x)
        self.mean = projected.mean(axis=0)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.lda.transform(x) - self.mean
        norm = np.linalg.norm(y, axis=1, keepdims=True)
        return y * (np.sqrt(y.shape[1]) / np.maximum(norm, 1e-12))


class LogisticBackend:
    """Multinomial logistic regression on processed x-vectors; scores are log-posteriors."""

    def __init__(self, c: float, max_iter: int, class_weight: str) -> None:
        self.model = LogisticRegression(
            C=c, max_iter=max_iter, class_weight=None if class_weight == "none" else class_weight
        )

    def fit(self, x: np.ndarray, labels: np.ndarray) -> LogisticBackend:
        self.model.fit(x, labels)
        log.info("logistic regression: training accuracy %.2f%%", 100 * self.model.score(x, labels))
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # Not log_softmax(decision_function): for two classes sklearn returns one column.
        return self.model.predict_log_proba(x)


class CosineBackend:
    """Cosine similarity to each language's mean processed training x-vector."""

    def fit(self, x: np.ndarray, labels: np.ndarray) -> CosineBackend:
        means = np.stack([x[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
        self.means = _unit(means)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _unit(x) @ self.means.T


def classifier_scores(logits: np.ndarray, use_log_softmax: bool) -> np.ndarray:
    """The network's language outputs as scores (log-posteriors by default)."""
    logits = logits.astype(np.float64)
    return log_softmax(logits, axis=1) if use_log_softmax else logits


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
