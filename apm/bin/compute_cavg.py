"""Drop-in for the OLR challenge script: `compute_cavg.py -matrix|-pairs TRIALS SCORES`.

Prints `Cavg <value>` exactly as the challenge script does (21 thresholds, rounded to 4
decimals). `--open-set` selects the unknown-language variant: the utterances that have no
target trial in TRIALS are the unknown class. `--eer` also prints `EER <percent>` and
`--min-cavg` the exact minimum over all thresholds as `minCavg <value>`.
"""

from __future__ import annotations

import argparse

from apm.bin.cli import main
from apm.metrics import align_trials, challenge_cavg, eer, min_cavg, read_scores
from apm.metrics.trialscores import read_trial_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compute_cavg", description=__doc__.split("\n\n")[0])
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument(
        "-matrix",
        dest="fmt",
        action="store_const",
        const="matrix",
        help="SCORES is a matrix file (header of languages, then utt s1 s2 ...)",
    )
    fmt.add_argument(
        "-pairs",
        dest="fmt",
        action="store_const",
        const="pairs",
        help="SCORES has 'lang utt score' lines",
    )
    p.add_argument("trials", help="OLR trials: '<lang> <utt> target|nontarget' per line")
    p.add_argument("scores", help="score file in the chosen format")
    p.add_argument(
        "--open-set",
        action="store_true",
        help="open-set Cavg: utterances without a target trial are the unknown class",
    )
    p.add_argument("--eer", action="store_true", help="also print 'EER <percent>'")
    p.add_argument(
        "--min-cavg",
        action="store_true",
        help="also print 'minCavg <value>', the minimum over all thresholds",
    )
    return p


def run(args: argparse.Namespace) -> None:
    trials = read_trial_table(args.trials)
    ts = align_trials(trials, read_scores(args.scores, args.fmt), args.trials)
    print("Cavg", challenge_cavg(ts, args.open_set).cavg)
    if args.min_cavg:
        print("minCavg", min_cavg(ts, args.open_set).cavg)
    if args.eer:
        print("EER", round(eer(ts.score[ts.is_target], ts.score[~ts.is_target]), 4))


def console() -> None:
    """The console entry point (pyproject [project.scripts])."""
    main(build_parser(), run)


if __name__ == "__main__":
    main(build_parser(), run)
