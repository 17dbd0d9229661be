"""Equal error rate and DET curve of pooled target / non-target trial scores.

A trial is accepted when score >= t. The operating points are t = every distinct score and
t = +inf; the EER is where the straight line between the two points that bracket
P_miss = P_fa crosses it (the usual ROC interpolation, as `scipy.optimize.brentq` on an
`interp1d` of `sklearn.metrics.roc_curve` computes it).
"""

from __future__ import annotations

import numpy as np

from apm.utils import ApmError


def det_curve(target: np.ndarray, nontarget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P_fa, P_miss) at every distinct threshold, from accept-all to accept-none."""
    if len(target) == 0 or len(nontarget) == 0:
        raise ApmError(
            f"EER/DET need target and non-target trials, got {len(target)} and {len(nontarget)}"
        )
    values = np.unique(np.concatenate([target, nontarget]))
    # index j: threshold values[j]; the last point is +inf (nothing accepted)
    below_t = np.searchsorted(np.sort(target), values, side="left")
    below_n = np.searchsorted(np.sort(nontarget), values, side="left")
    p_miss = np.concatenate([below_t, [len(target)]]) / len(target)
    p_fa = 1.0 - np.concatenate([below_n, [len(nontarget)]]) / len(nontarget)
    return p_fa, p_miss


def eer(target: np.ndarray, nontarget: np.ndarray) -> float:
    """Equal error rate in percent."""
    p_fa, p_miss = det_curve(target, nontarget)
    k = int(np.argmax(p_miss >= p_fa))  # first point past the crossing; k >= 1
    d0 = p_fa[k - 1] - p_miss[k - 1]
    d1 = p_fa[k] - p_miss[k]
    a = d0 / (d0 - d1)
    return float(100.0 * (p_miss[k - 1] + a * (p_miss[k] - p_miss[k - 1])))
