"""A deliberately weak language-recognition baseline, to check that mini-OLR is a real task.

Per utterance: the mean and standard deviation of 40-dim log-mel fbank (lhotse's Kaldi-
compatible extractor) -> standardised -> multinomial logistic regression trained on `train`.
It sees no phonotactics and no channel robustness, so it must do clearly better than chance
on task_full and clearly worse on task_short (1 s) and task_cross (unseen channel); if it is
near perfect everywhere, the corpus leaks speaker, channel or text identity.

    .venv/bin/python tests/weak_baseline.py egs/olr/data [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import Fbank, FbankConfig
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

# The OLR recipe's test tasks, from its one definition (egs/olr/local/mini_olr/tasks.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "egs" / "olr" / "local"))
from mini_olr.tasks import TEST_SETS as TASKS  # noqa: E402

_FBANK = Fbank(FbankConfig(num_filters=40))


def utterance_stats(path: str) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32")
    feats = _FBANK.extract(samples, rate)
    return np.concatenate([feats.mean(axis=0), feats.std(axis=0)])


def load_set(set_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    wavs = dict(line.split(maxsplit=1) for line in (set_dir / "wav.scp").read_text().splitlines())
    langs = dict(line.split() for line in (set_dir / "utt2lang").read_text().splitlines())
    utts = sorted(wavs)
    x = np.stack([utterance_stats(wavs[u].strip()) for u in utts])
    return utts, x, [langs[u] for u in utts]


def cavg(
    log_post: np.ndarray, labels: list[str], targets: list[str], p_target: float = 0.5
) -> float:
    """OLR Cavg with hard decisions at log-likelihood ratio 0.

    The LLR of target t is log p_t - log((1 - p_t) / (N - 1)) (posterior odds against the
    average of the other targets). For each target t: P_target * P_miss(t) + the sum over the
    non-target classes n (other targets, plus 'unknown' in an open set) of
    (1 - P_target) / (#non-target classes) * P_fa(t, n); averaged over the targets.
    """
    n = len(targets)
    post = np.exp(log_post)
    llr = np.log(post + 1e-12) - np.log((1 - post) / (n - 1) + 1e-12)
    accept = llr > 0
    labels_arr = np.array([lab if lab in targets else "<unknown>" for lab in labels])
    classes = [*targets, *(["<unknown>"] if "<unknown>" in labels_arr else [])]
    total = 0.0
    for t_idx, t in enumerate(targets):
        is_t = labels_arr == t
        p_miss = 1.0 - accept[is_t, t_idx].mean() if is_t.any() else 0.0
        others = [c for c in classes if c != t]
        p_fa = sum(accept[labels_arr == c, t_idx].mean() for c in others if (labels_arr == c).any())
        total += p_target * p_miss + (1 - p_target) / len(others) * p_fa
    return total / n


def run(data: Path) -> dict[str, dict[str, float]]:
    _, x_train, y_train = load_set(data / "train")
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=0.5, max_iter=2000).fit(scaler.transform(x_train), y_train)
    targets = list(model.classes_)
    results = {}
    for task in TASKS:
        if not (data / task).is_dir():
            continue
        _, x, y = load_set(data / task)
        log_post = model.predict_log_proba(scaler.transform(x))
        known = np.array([lab in targets for lab in y])
        pred = np.array(targets)[log_post.argmax(axis=1)]
        acc = float((pred[known] == np.array(y)[known]).mean())
        results[task] = {"accuracy": acc, "cavg": float(cavg(log_post, y, targets))}
    results["chance_accuracy"] = {"accuracy": 1.0 / len(targets), "cavg": 0.5}
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", type=Path, help="data dir with train/ and task_*/ Kaldi dirs")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    results = run(args.data)
    print("| task | accuracy | Cavg |\n|---|---:|---:|")
    for task, r in results.items():
        print(f"| {task} | {r['accuracy']:.3f} | {r['cavg']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
