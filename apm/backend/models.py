"""The back-end models: embedding processing, logistic regression, cosine, classifier outputs,
and their registry by name (`BACKENDS`).

All scorers return a (utterances x languages) float64 matrix with columns in the order of the
training languages (`languages.txt`), the class order used for the labels 0..K-1.

A back-end is a class with `name`, `input` (`xvector`: it is fitted on and scores the
processed x-vectors of `EmbeddingProcessor`; `logits`: it scores the network's language
outputs and needs no training), `from_config(BackendConfig)`, `fit(z, labels)`,
`__call__(matrix) -> scores`, and `state() -> {name: array}` / `load_state(arrays)`: the
fitted model as plain float arrays, which stage 6 saves (`apm.backend.store`, no pickle) and
every scorer (stage 6 itself, the model package) loads. A model scores from those arrays
only, so a loaded one gives the scores of the fitted one bit for bit. A new back-end is one
such class and one line in `BACKENDS`; `backends:` in conf/backend.yaml names it, and its
errors list the registered names.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
from scipy.special import expit, log_softmax
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.utils.extmath import softmax

from apm.utils import ApmError

if TYPE_CHECKING:
    from apm.backend.config import BackendConfig

log = logging.getLogger(__name__)


class BackendModel(Protocol):
    """What the registry holds (see the module docstring)."""

    name: ClassVar[str]
    input: ClassVar[str]

    @classmethod
    def from_config(cls, conf: BackendConfig) -> BackendModel: ...

    def fit(self, x: np.ndarray, labels: np.ndarray) -> BackendModel: ...

    def __call__(self, matrix: np.ndarray) -> np.ndarray: ...

    def state(self) -> dict[str, np.ndarray]: ...

    def load_state(self, arrays: dict[str, np.ndarray]) -> BackendModel: ...


class KaldiLda:
    """Kaldi's `ivector-compute-lda` (total-covariance-factor 0): an affine map to `dim`
    dimensions that may exceed (classes - 1), as the OLR baselines' `lda100`.

    Vectors are centred on the global mean (utterances weighted equally). With W the
    within-class and B the between-class covariance (class means weighted by class size,
    both normalised by the number of vectors), T = S^-1/2 U^T for the eigendecomposition
    W = U S U^T whitens W; as in Kaldi, the eigenvalues S are floored at `covariance_floor`
    times the largest, so a singular W (fewer than dim + classes vectors, or a direction
    without within-class variation) still gives a map. The rows of the map are the
    eigenvectors of T B T^T with the `dim` largest eigenvalues, times T. So the output has
    identity within-class covariance (where W was not floored) and a diagonal between-class
    covariance holding those eigenvalues (descending); the dimensions past (classes - 1)
    have eigenvalue 0 and keep the whitened within-class variation. As Kaldi, it needs at
    least as many vectors as their dimension.
    """

    def __init__(self, dim: int, covariance_floor: float = 1e-6) -> None:
        self.dim, self.covariance_floor = dim, covariance_floor

    def fit(self, x: np.ndarray, labels: np.ndarray) -> KaldiLda:
        x = np.asarray(x, dtype=np.float64)
        n, d = x.shape
        classes, idx = np.unique(labels, return_inverse=True)
        full_rank = f"a within-class covariance of full rank needs at least {d + len(classes)}"
        if n < d:
            raise ApmError(
                f"Kaldi LDA: {n} x-vectors of dimension {d} ({len(classes)} languages) are too "
                f"few: ivector-compute-lda needs at least {d} ({full_rank}); train the back-end "
                "on more x-vectors, or use lda_impl: sklearn"
            )
        self.mean = x.mean(axis=0)
        xc = x - self.mean
        counts = np.bincount(idx).astype(np.float64)
        means = np.zeros((len(classes), d))
        np.add.at(means, idx, xc)
        means /= counts[:, None]
        between = (means.T * counts) @ means / n
        within = xc.T @ xc / n - between
        values, vectors = np.linalg.eigh(within)
        if not values[-1] > 1e-12 * np.trace(xc.T @ xc / n):  # rounding noise only
            raise ApmError(
                f"Kaldi LDA: the {n} x-vectors ({len(classes)} languages) have no within-class "
                "variation (each language's x-vectors are all the same)"
            )
        floor = self.covariance_floor * values[-1]
        n_floored = int((values < floor).sum())
        if n_floored:
            log.warning(
                "Kaldi LDA: floored %d of %d eigenvalues of the within-class covariance to %.3g "
                "(%d x-vectors; %s)",
                n_floored,
                d,
                floor,
                n,
                full_rank,
            )
        whiten = (vectors / np.sqrt(np.maximum(values, floor))).T  # S^-1/2 U^T
        values, vectors = np.linalg.eigh(whiten @ between @ whiten.T)
        order = np.argsort(values)[::-1][: self.dim]
        self.eigenvalues = values[order]
        self.matrix = vectors[:, order].T @ whiten  # dim x d
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.matrix.T


class EmbeddingProcessor:
    """LDA -> subtract the training mean -> length normalisation.

    Vectors are scaled to norm sqrt(dim) as Kaldi's `ivector-normalize-length` does, so the
    logistic regression's L2 strength means the same whatever the LDA dimension. `impl`:
    `sklearn` (at most classes - 1 dimensions) or `kaldi` (`KaldiLda`, up to the x-vector
    size). The fitted state (`state()`): `lda_mean` [d], `lda_scalings` [d, r] and `mean`
    [dim]; the LDA is `((x - lda_mean) @ lda_scalings)[:, :dim]`, scikit-learn's own
    `transform` (solver svd) computed the same way, so the scores do not depend on whether
    the model was just fitted or loaded.
    """

    def __init__(self, lda_dim: int, impl: str = "sklearn") -> None:
        self.lda_dim, self.impl = lda_dim, impl

    def fit(self, x: np.ndarray, labels: np.ndarray) -> EmbeddingProcessor:
        n_class = len(np.unique(labels))
        if n_class < 2:
            raise ApmError("the back-end needs training x-vectors of at least 2 languages")
        cap = x.shape[1] if self.impl == "kaldi" else min(n_class - 1, x.shape[1])
        dim = min(self.lda_dim, cap)
        if dim < self.lda_dim:
            log.info(
                "LDA dimension %d capped to %d (%s)",
                self.lda_dim,
                dim,
                "x-vector size" if self.impl == "kaldi" else "languages - 1, x-vector size",
            )
        if self.impl == "kaldi":
            lda = KaldiLda(dim).fit(x, labels)
            log.info("Kaldi LDA to %d dimensions (%d languages)", dim, n_class)
            self.lda_mean, self.lda_scalings = lda.mean, lda.matrix.T
        else:
            lda = LinearDiscriminantAnalysis(n_components=dim, solver="svd").fit(x, labels)
            self.lda_mean, self.lda_scalings = lda.xbar_, lda.scalings_
        self.dim = dim
        self.mean = np.zeros(dim)
        self.mean = self._project(np.asarray(x, dtype=np.float64)).mean(axis=0)
        return self

    def _project(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.lda_mean) @ self.lda_scalings)[:, : self.dim] - self.mean

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self._project(np.asarray(x, dtype=np.float64))
        norm = np.linalg.norm(y, axis=1, keepdims=True)
        return y * (np.sqrt(y.shape[1]) / np.maximum(norm, 1e-12))

    def state(self) -> dict[str, np.ndarray]:
        return {"lda_mean": self.lda_mean, "lda_scalings": self.lda_scalings, "mean": self.mean}

    def load_state(self, arrays: dict[str, np.ndarray]) -> EmbeddingProcessor:
        self.lda_mean, self.lda_scalings = arrays["lda_mean"], arrays["lda_scalings"]
        self.mean = arrays["mean"]
        self.dim = len(self.mean)
        return self

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(matrix [d, dim], offset [dim]): the projection before length normalisation as
        x @ matrix + offset (for exported graphs; equal to `_project` up to rounding)."""
        matrix = self.lda_scalings[:, : self.dim]
        return matrix, -(self.lda_mean @ matrix) - self.mean


class LogisticBackend:
    """Multinomial logistic regression on processed x-vectors; scores are log-posteriors.

    Fitted with scikit-learn; state `coef` [K, dim] and `intercept` [K] (two languages:
    one row, p(second) = sigmoid(coef z + intercept)), scored as scikit-learn's
    `predict_log_proba` computes it.
    """

    name: ClassVar[str] = "lr"
    input: ClassVar[str] = "xvector"

    @classmethod
    def from_config(cls, conf: BackendConfig) -> LogisticBackend:
        return cls(conf.lr_c, conf.lr_max_iter, conf.lr_class_weight)

    def __init__(self, c: float, max_iter: int, class_weight: str) -> None:
        self.c, self.max_iter = c, max_iter
        self.class_weight = None if class_weight == "none" else class_weight

    def fit(self, x: np.ndarray, labels: np.ndarray) -> LogisticBackend:
        model = LogisticRegression(C=self.c, max_iter=self.max_iter, class_weight=self.class_weight)
        model.fit(x, labels)
        log.info("logistic regression: training accuracy %.2f%%", 100 * model.score(x, labels))
        self.coef, self.intercept = model.coef_, model.intercept_
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        decision = x @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # scikit-learn's binary model
            p = expit(decision[:, 0])
            return np.log(np.stack([1 - p, p], axis=1))
        return np.log(softmax(decision, copy=False))

    def state(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}

    def load_state(self, arrays: dict[str, np.ndarray]) -> LogisticBackend:
        self.coef, self.intercept = arrays["coef"], arrays["intercept"]
        return self

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight [K, dim], bias [K]) with log_softmax(z @ weight.T + bias) = the scores
        (the binary model as a zero first row), for exported graphs."""
        if self.coef.shape[0] == 1:
            return (np.vstack([np.zeros_like(self.coef), self.coef]),
                    np.concatenate([[0.0], self.intercept]))  # fmt: skip
        return self.coef, self.intercept


class CosineBackend:
    """Cosine similarity to each language's mean processed training x-vector."""

    name: ClassVar[str] = "cosine"
    input: ClassVar[str] = "xvector"

    @classmethod
    def from_config(cls, conf: BackendConfig) -> CosineBackend:
        return cls()

    def fit(self, x: np.ndarray, labels: np.ndarray) -> CosineBackend:
        means = np.stack([x[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
        self.means = _unit(means)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _unit(x) @ self.means.T

    def state(self) -> dict[str, np.ndarray]:
        return {"means": self.means}

    def load_state(self, arrays: dict[str, np.ndarray]) -> CosineBackend:
        self.means = arrays["means"]
        return self


class ClassifierBackend:
    """The network's language outputs as scores (log-posteriors by default, else raw logits)."""

    name: ClassVar[str] = "classifier"
    input: ClassVar[str] = "logits"

    @classmethod
    def from_config(cls, conf: BackendConfig) -> ClassifierBackend:
        return cls(conf.classifier_log_softmax)

    def __init__(self, use_log_softmax: bool = True) -> None:
        self.use_log_softmax = use_log_softmax

    def fit(self, x: np.ndarray, labels: np.ndarray) -> ClassifierBackend:
        return self  # the network was trained in stage 4

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float64)
        return log_softmax(logits, axis=1) if self.use_log_softmax else logits

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, arrays: dict[str, np.ndarray]) -> ClassifierBackend:
        return self


# The registry: a name in `backends:` -> class. A new back-end is one class and one line here.
BACKENDS: dict[str, type[BackendModel]] = {
    cls.name: cls for cls in (LogisticBackend, CosineBackend, ClassifierBackend)
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
