#!/usr/bin/env bash
# Kaldi-style job dispatcher (run.pl / slurm.pl / queue.pl in one), named by a recipe's cmd.sh:
#
#   dispatch.sh local|slurm|sge [--mem 4G] [--num-threads N] [--gpu G] [--time T]
#     [--max-jobs-run M] [--num-nodes K] [--queue-opts "..."] [JOB=1:N] <log> <command...>
#
# runs <command> once per JOB (every word JOB in <log> and <command> becomes the task number)
# on this machine (local: at most the cores at once), as one Slurm array job (sbatch --wait
# --array) or one SGE array job (qsub -sync y -t), each task logging to its <log>. Failed
# tasks are named with their logs; the exit status is then 1. Details: apm/utils/dispatch.py
# and docs/cluster.md.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
exec python -m apm.utils.dispatch "$@"
