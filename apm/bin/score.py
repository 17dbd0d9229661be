"""Stage 6: fit the back-ends of conf/backend.yaml (and their calibration on --dev-sets),
save them in exp/<system>/backend/, and score the test tasks with the saved copy."""

from __future__ import annotations

import argparse

from apm.backend import load_backend_config, score_system
from apm.bin.cli import main, str2bool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="score", description=__doc__)
    p.add_argument("--config", default=None, help="back-end YAML (default: built-in defaults)")
    p.add_argument("--data", default="data", help="directory of the Kaldi data dirs")
    p.add_argument("--train-set", default="train", help="the system's training set")
    p.add_argument(
        "--backend-train-set",
        default="",
        help="set whose x-vectors train the LDA / logistic regression / cosine back-ends "
        "(default: --train-set; the AP20 baseline uses the enrollment set); it needs "
        "utt2lang under --data and x-vectors from stage 5, in languages.txt's languages",
    )
    p.add_argument(
        "--dev-sets",
        default="",
        help="scored sets (space separated, each with utt2lang and x-vectors) on which every "
        "back-end is calibrated (multiclass logistic regression: a scale and an offset per "
        "language); calibrated log-posteriors go to scores/calibrated/. Empty: no calibration",
    )
    p.add_argument(
        "--skip-bad",
        type=str2bool,
        default=False,
        help="leave out test utterances without x-vectors instead of stopping",
    )
    p.add_argument("system_dir", help="exp/<system>")
    p.add_argument("tasks", nargs="+", help="test sets under --data (each with trials)")
    return p


def run(args: argparse.Namespace) -> None:
    conf = load_backend_config(args.config)
    train_set = args.backend_train_set or args.train_set
    score_system(
        args.system_dir,
        args.data,
        train_set,
        args.tasks,
        conf,
        args.skip_bad,
        args.dev_sets.split(),
    )


if __name__ == "__main__":
    main(build_parser(), run)
