"""Multiclass linear logistic-regression calibration and fusion of language scores.

One model covers both (Brümmer's multiclass "linear logistic regression" fusion, as in the
FoCal Multiclass toolkit: N. Brümmer, "FoCal Multi-class: Toolkit for Evaluation, Fusion and
Calibration of Multi-class Recognition Scores", 2007; N. Brümmer and D. van Leeuwen, "On
calibration of language recognition scores", Odyssey 2006): the calibrated log-likelihoods
of S systems' score matrices s_1..s_S [N, K] are

    l = sum_s scale_s * s_s + offset          (scale_s a scalar, offset [K] per language)

a scale per system and an offset per language, so K + S parameters. Calibration is the case
S = 1. The scale and offsets are chosen, not a full K x K affine map, because the dev sets
are small (mini-OLR: a few hundred utterances for 10 languages): a full map would overfit,
and a common scale keeps the ranking of each utterance's languages. The parameters minimise
the multiclass cross-entropy with every language weighted equally (the multiclass Cllr
objective of `apm.metrics.cllr`, in nats) plus `L2` * (sum scale^2 + sum offset^2), a weak
penalty that keeps them finite when the dev set is separable.

Calibrated scores are written as log-posteriors under equal language priors,
log_softmax(l): log-likelihoods up to a per-utterance constant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from apm.utils import ApmError

log = logging.getLogger(__name__)

L2 = 1e-4
MAX_ITER = 1000


@dataclass
class Affine:
    """l = sum_s scales[s] * scores[s] + offsets, as log-posteriors (see the module)."""

    scales: np.ndarray  # [S]
    offsets: np.ndarray  # [K]

    def __call__(self, scores: list[np.ndarray]) -> np.ndarray:
        if len(scores) != len(self.scales):
            raise ValueError(f"{len(scores)} score matrices for {len(self.scales)} scales")
        fused = sum(a * np.asarray(s, dtype=np.float64) for a, s in zip(self.scales, scores,
                                                                         strict=True))  # fmt: skip
        return log_softmax(fused + self.offsets, axis=1)

    def state(self) -> dict[str, np.ndarray]:
        return {"scales": self.scales, "offsets": self.offsets}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray]) -> Affine:
        return cls(np.asarray(arrays["scales"], np.float64), np.asarray(arrays["offsets"],
                                                                        np.float64))  # fmt: skip


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-utterance weights 1 / (classes present * utterances of its class): every class
    present counts equally, and the weights sum to 1."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[labels])


def fit_affine(
    scores: list[np.ndarray], labels: np.ndarray, l2: float = L2, what: str = "calibration"
) -> Affine:
    """The scale per score matrix and offset per language minimising the class-weighted
    cross-entropy of `labels` (0..K-1, one per row) plus `l2` times the squared parameters."""
    mats = [np.asarray(s, dtype=np.float64) for s in scores]
    labels = np.asarray(labels, dtype=np.int64)
    n, k = mats[0].shape
    if any(m.shape != (n, k) for m in mats) or labels.shape != (n,):
        raise ValueError("score matrices and labels of different sizes")
    if n == 0 or len(np.unique(labels)) < 2:
        raise ApmError(
            f"{what}: the dev data has utterances of {len(np.unique(labels))} language(s); it "
            "needs at least 2 to learn anything"
        )
    if not all(np.isfinite(m).all() for m in mats):
        raise ApmError(f"{what}: non-finite scores in the dev data")
    weight = class_weights(labels, k)
    n_sys = len(mats)
    stacked = np.stack(mats)  # [S, N, K]
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        scales, offsets = theta[:n_sys], theta[n_sys:]
        logp = log_softmax(np.tensordot(scales, stacked, axes=1) + offsets, axis=1)
        loss = -float(weight @ logp[np.arange(n), labels]) + l2 * float(theta @ theta)
        g = weight[:, None] * (np.exp(logp) - onehot)  # d loss / d l
        grad = np.concatenate([np.einsum("snk,nk->s", stacked, g), g.sum(axis=0)])
        return loss, grad + 2 * l2 * theta

    start = np.concatenate([np.full(n_sys, 1.0 / n_sys), np.zeros(k)])
    result = minimize(objective, start, jac=True, method="L-BFGS-B",
                      options={"maxiter": MAX_ITER})  # fmt: skip
    if not np.all(np.isfinite(result.x)):
        raise ApmError(f"{what}: the logistic regression diverged ({result.message})")
    if not result.success:
        log.warning("%s: L-BFGS stopped before convergence (%s)", what, result.message)
    return Affine(result.x[:n_sys].copy(), result.x[n_sys:].copy())
