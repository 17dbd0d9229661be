"""Stage 7 metrics: OLR score files, Cavg (challenge and exact-minimum), EER, DET, accuracy."""

from apm.metrics.cavg import CavgResult, challenge_cavg, challenge_thresholds, min_cavg
from apm.metrics.eer import det_curve, eer
from apm.metrics.evaluate import confusion_matrix, evaluate_task
from apm.metrics.languages import read_languages
from apm.metrics.scorefile import Scores, read_scores, write_matrix
from apm.metrics.trialscores import TrialScores, align_trials

__all__ = [
    "CavgResult",
    "Scores",
    "TrialScores",
    "align_trials",
    "challenge_cavg",
    "challenge_thresholds",
    "confusion_matrix",
    "det_curve",
    "eer",
    "evaluate_task",
    "min_cavg",
    "read_languages",
    "read_scores",
    "write_matrix",
]
