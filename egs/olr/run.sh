#!/usr/bin/env bash
# OLR recipe: phoneme-aware language recognition with multi-task x-vectors.
# Run from anywhere; data/ and exp/ live next to this script. Every stage runs in this
# directory (the recipe directory): paths inside generated files are relative to it.
# Relative paths given on the command line are relative to the caller's directory.
set -euo pipefail
. "$(dirname "$0")/utils/recipe.sh"
recipe_enter "$@"  # enter the recipe directory; records the command line for RESULTS.md

help_message="Usage: ./run.sh [options]

Stages (default: all, 0..7):
  0  corpus: synthesize mini-OLR (default) or import a real OLR release (--olr-root DIR)
  1  lhotse manifests: import + validate the Kaldi data dirs, optional speed perturbation
  2  features: fbank + energy VAD (lilcom lhotse store, Kaldi vad.scp; feats.scp with --kaldi-copy)
  3  virtual phoneme alignment of the training set (PocketSphinx all-phone by default)
  4  multi-task x-vector training, one run per system (conf/<system>.yaml)
  5  embedding extraction for the training and test sets
  6  back-end scoring per test task (OLR matrix score files); the back-end is saved in
     exp/<system>/backend and calibrated on the dev sets (scores/calibrated/)
  7  fusion of the systems on the dev sets (exp/fusion, with 2+ systems); metrics and report:
     Cavg, EER, Cllr per task; results.md, plots, RESULTS.md; then each system's model
     package exp/<system>/model (python -m apm.bin.identify)

Examples:
  ./run.sh                                   # the whole recipe on mini-OLR
  ./run.sh --stage 4 --stop-stage 5 --systems apm_am
  ./run.sh --olr-root /data/AP20-OLR --train-set train --test-sets \"task1 task2 task3\""

stage=0                     # first stage to run
stop_stage=7                # last stage to run
nj=                        # parallel jobs for CPU stages (0-3) (empty: apm.utils.defaults.NJ)
seed=777                    # random seed of every stage
force=false                 # redo stages even if recorded as done
skip_bad=false              # skip (and count) bad utterances instead of stopping
olr_root=                   # real OLR release as Kaldi data dirs; empty: synthesize mini-OLR
corpus_size=mini            # mini-OLR size: tiny, mini or full
train_set=train             # training set name under data/
test_sets=auto              # test sets (each has trials); auto: the OLR test tasks (local/mini_olr/tasks.py)
dev_sets=auto               # dev sets (with trials) for choices such as margins; auto: mini-OLR's
                            # (local/mini_olr/tasks.py), none with --olr-root
speed_perturb=false         # add 0.9/1.1 speed-perturbed copies of the training set
fbank_conf=conf/fbank.yaml  # feature configuration
kaldi_copy=false            # stage 2: also write a Kaldi feats.scp/ark copy of the features (float32)
ali_from=pocketsphinx       # virtual phone labels: pocketsphinx, oracle or kaldi:DIR
ali_dir=                    # stage 3 output and stage 4 input (default: <data>/ali/<train-set>)
align_conf=conf/align.yaml  # aligner configuration
systems="apm_am am"         # systems to train and score, each <system-conf-dir>/<system>.yaml
system_conf_dir=conf        # where the system configs live
resume=true                 # stage 4: continue killed training runs (false: retrain from scratch)
ngpu=0                      # GPUs for training/extraction (torchrun when > 1)
jobs=auto                   # stages 4-5: systems trained/extracted at once, sharing the cores (auto: nproc; 1 with --ngpu > 0)
extract_nj=1                # stage 5: jobs per system through $decode_cmd (cmd.sh), each every N-th utterance
backend_conf=conf/backend.yaml  # back-end configuration
fuse=true                   # stage 7: fuse the systems' scores (2+ systems, dev sets) into exp/fusion, a row of RESULTS.md
backend_train_set=          # set whose x-vectors train LDA/LR (empty: --train-set; AP20 baseline: its enroll set, imported and embedded with the others, not scored, no trials needed)
data=data                   # where data dirs, manifests, features, alignments go
exp=exp                     # where systems, logs and stage records go
results=                    # the table gathering all systems (stage 7; default: <exp>/RESULTS.md)

. ./path.sh
. utils/parse_options.sh
. ./cmd.sh  # where jobs run: train_cmd, decode_cmd, cuda_cmd (local by default)
. utils/stage.sh

recipe_check_options
recipe_caller_paths olr_root data exp results fbank_conf align_conf backend_conf system_conf_dir ali_dir
if [[ $given_options = *" ali-from "* && $ali_from = kaldi:* ]]; then
  ali_from=kaldi:$(recipe_caller_path "${ali_from#kaldi:}")
fi
results=${results:-$exp/RESULTS.md}
if [ $# -ne 0 ]; then
  echo "$0: unexpected arguments: $*  (see --help)" >&2
  exit 1
fi
# The recipe's sets are defined once, in local/mini_olr/tasks.py.
[ "$test_sets" = auto ] && test_sets=$(python -m mini_olr.tasks test)
if [ "$dev_sets" = auto ]; then
  if [ -n "$olr_root" ]; then dev_sets=""; else dev_sets=$(python -m mini_olr.tasks dev); fi
fi
data_card=  # the training corpus described in every model package's MODEL.md
if [ -z "$olr_root" ]; then data_card=local/mini_olr/data_card.md; fi  # synthetic speech
scored_sets=$(echo $dev_sets $test_sets)  # scored and reported in stages 6-7
sets="$train_set $scored_sets"  # imported, given features and embedded (stages 0-2, 5)
import_opts=()
if [ -n "$backend_train_set" ] && [[ " $sets " != *" $backend_train_set "* ]]; then
  sets+=" $backend_train_set"  # the back-end's training set: embedded, not scored
  import_opts=(--scored-sets "$scored_sets")  # it needs no trials
fi
ali_dir=${ali_dir:-$data/ali/$train_set}
mkdir -p "$exp"
recipe_lock_dirs  # one run at a time into this --exp (and --data, when stages 0-3 write it)
if [ "$force" = true ] && [ "$stage" -eq 0 ] && [ -z "$olr_root" ]; then
  rm -f "$data/mini_olr/.stamp"  # --force true regenerates the corpus too
fi

if [ -n "$olr_root" ]; then
  run_stage 0 import_olr --watch "$olr_root" steps/import_data_dirs.sh --skip-bad "$skip_bad" \
    ${import_opts[@]+"${import_opts[@]}"} "$olr_root" "$data" $sets
else
  run_stage 0 make_mini_olr local/make_mini_olr.sh --size "$corpus_size" ${nj:+--nj "$nj"} --seed "$seed" "$data"
fi

oracle_dir=$data/oracle_ali/$train_set  # mini-OLR: eSpeak's own timings (stage 3 reference, --ali-from oracle)
recipe_stages_1_to_7
