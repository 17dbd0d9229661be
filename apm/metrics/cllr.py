"""Multiclass Cllr, its minimum, and Cavg at the Bayes threshold of calibrated scores.

Multiclass Cllr (N. Brümmer and D. van Leeuwen, "On calibration of language recognition
scores", Odyssey 2006; N. Brümmer, "FoCal Multi-class", 2007), in bits, of log-likelihoods
l [N, K] (any per-utterance constant cancels) and true classes y:

    Cllr = -(1/K) sum_k (1/N_k) sum_{i: y_i = k} log2 P(k | l_i),
    P(k | l_i) = exp(l_ik) / sum_j exp(l_ij)      (equal priors 1/K)

so every class counts equally whatever its size. A perfect system with infinitely confident
scores has Cllr 0; an uninformative one that says P(k | l) = 1/K for every utterance has
Cllr log2(K); one that is confidently wrong has Cllr without bound. K is the number of
score columns (the classes a posterior is spread over), and the mean runs over the classes
that have utterances.

min Cllr: Cllr after the best calibration of the same family as stage 6's (a scale and an
offset per class, `apm.backend.calibration`, fitted on the evaluated scores themselves,
without a penalty). Multiclass Cllr has no PAV minimum as the binary one; this is FoCal
Multiclass's "min Cllr" for affine calibration. Cllr - min Cllr is the calibration loss.

Actual Cavg: the OLR Cavg (`apm.metrics.cavg`) with every detection decided at the Bayes
threshold. With equal target-language priors and P_target 0.5, the detection log-likelihood
ratio of target L for an utterance is

    llr_L = l_L - log( (1 / (K - 1)) sum_{N != L} exp(l_N) )

and the Bayes decision accepts when llr_L >= log(P_nontarget_total / P_target) = 0. Actual
Cavg is Cavg of the llr trial scores at threshold 0; the minimum over thresholds of the same
llr scores is `min_cavg` of them, so actual - minimum is what the decisions lose to
miscalibration. In open-set tasks the unknown class has no model: the llr ignores it while
its false alarms are counted, as the challenge's open-set Cavg does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.special import log_softmax, logsumexp

from apm.metrics.cavg import P_TARGET, cavg_curve, min_cavg
from apm.metrics.trialscores import TrialScores, utterance_scores


def multiclass_cllr(log_likelihoods: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Cllr in bits (module docstring); `labels` index the columns, one per row."""
    from apm.backend.calibration import class_weights

    ll = np.asarray(log_likelihoods, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    logp = log_softmax(ll, axis=1)[np.arange(len(labels)), labels]
    return float(-(class_weights(labels, ll.shape[1]) @ logp) / np.log(2))


def min_multiclass_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cllr after the scale-and-offsets calibration fitted on these scores (module docstring)."""
    from apm.backend.calibration import fit_affine

    best = fit_affine([scores], labels, l2=0.0, what="min Cllr")([scores])
    # the identity (scale 1, offsets 0) is in the family: never report more than it gives
    return min(multiclass_cllr(best, labels), multiclass_cllr(scores, labels))


def detection_llrs(log_likelihoods: np.ndarray) -> np.ndarray:
    """[N, K] detection log-likelihood ratios llr_L (module docstring)."""
    ll = np.asarray(log_likelihoods, dtype=np.float64)
    k = ll.shape[1]
    out = np.empty_like(ll)
    for lang in range(k):
        others = np.delete(ll, lang, axis=1)
        out[:, lang] = ll[:, lang] - (logsumexp(others, axis=1) - np.log(k - 1))
    return out


def calibration_metrics(ts: TrialScores, calibrated: TrialScores, open_set: bool) -> dict:
    """Cllr (uncalibrated `ts` and `calibrated`), min Cllr, actual and minimum Cavg of the
    calibrated detection llrs, and the identification accuracy (%) of the calibrated scores,
    of one task's trials; Nones when the trials are not a full utterance x language matrix.
    Known-language utterances only enter Cllr and the accuracy."""
    none = dict.fromkeys(("uncalibrated_cllr", "cllr", "min_cllr", "actual_cavg",
                          "calibrated_min_cavg", "calibrated_accuracy"))  # fmt: skip
    raw, cal = utterance_scores(ts), utterance_scores(calibrated)
    if (ts.n_lang < 2 or ts.utts != calibrated.utts or ts.languages != calibrated.languages
            or not (np.isfinite(raw).all() and np.isfinite(cal).all())):  # fmt: skip
        return none
    cls = calibrated.utt_cls
    known = cls < calibrated.n_lang
    llr = detection_llrs(cal)
    llr_ts = replace(calibrated, score=llr[calibrated.utt, calibrated.lang])
    actual, _ = cavg_curve(llr_ts, np.zeros(1), open_set, P_TARGET)
    out = {
        "uncalibrated_cllr": None,
        "cllr": None,
        "min_cllr": None,
        "actual_cavg": round(float(actual[0]), 4),
        "calibrated_min_cavg": min_cavg(llr_ts, open_set).cavg,
        # identification by the calibrated posteriors (what identify answers at threshold 0)
        "calibrated_accuracy": (
            round(100.0 * float(np.mean(cal[known].argmax(axis=1) == cls[known])), 2)
            if known.any()
            else None
        ),  # fmt: skip
    }
    if len(np.unique(cls[known])) >= 2:
        out["uncalibrated_cllr"] = round(multiclass_cllr(raw[known], ts.utt_cls[known]), 4)
        out["cllr"] = round(multiclass_cllr(cal[known], cls[known]), 4)
        out["min_cllr"] = round(min_multiclass_cllr(cal[known], cls[known]), 4)
    return out
