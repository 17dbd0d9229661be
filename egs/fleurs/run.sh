#!/usr/bin/env bash
# FLEURS recipe: phoneme-aware language recognition on FLEURS (102 languages of read speech),
# the same stages 1-7 as egs/olr. Run from anywhere; data/ and exp/ live next to this script.
set -euo pipefail
. "$(dirname "$0")/utils/recipe.sh"
recipe_enter "$@"

help_message="Usage: ./run.sh --fleurs-root DIR [options]

Stages (default: all, 0..7):
  0  corpus: lhotse's prepare_fleurs on --fleurs-root -> Kaldi data dirs: train, dev, test
     (+ test_open with --open-langs), OLR trials (every utterance x every training language)
  1  lhotse manifests: import + validate the Kaldi data dirs, optional speed perturbation
  2  features: fbank + energy VAD
  3  virtual phoneme alignment of the training set (PocketSphinx all-phone)
  4  multi-task x-vector training, one run per system (<system-conf-dir>/<system>.yaml)
  5  embedding extraction
  6  back-end scoring of dev, test (closed-set) and test_open (open-set), calibrated on dev
  7  fusion of the systems on dev (exp/fusion); metrics and report: Cavg, EER, Cllr;
     exp/RESULTS.md; each system's model package

--fleurs-root is the directory lhotse's downloader writes (<root>/<lang>/{train,dev,test}/*.wav,
<root>/metadata/<lang>/{train,dev,test}.tsv), e.g. from
  pip install datasets; lhotse download fleurs -l en_us -l fr_fr /data   (-> /data/fleurs)
or, to smoke-test without downloading, a miniature one: local/make_mini_fleurs.py /tmp/fleurs

Examples:
  ./run.sh --fleurs-root /data/fleurs --ngpu 4       # every language found, conf/gpu systems
  ./run.sh --fleurs-root /data/fleurs --langs \"id_id ms_my ru_ru uk_ua\" --open-langs \"be_by\"
  ./run.sh --fleurs-root /tmp/fleurs --confs cpu     # the miniature corpus on CPUs"

stage=0                     # first stage to run
stop_stage=7                # last stage to run
nj=                        # parallel jobs for CPU stages (0-3) (empty: apm.utils.defaults.NJ)
seed=777                    # random seed of every stage
force=false                 # redo stages even if recorded as done
skip_bad=false              # skip (and count) bad utterances instead of stopping
fleurs_root=                # FLEURS as lhotse's downloader lays it out (required for stage 0)
langs=                      # training languages, FLEURS codes (e.g. "en_us fr_fr"); empty: all found
open_langs=                 # held-out languages: not trained on, scored as non-target in test_open
speed_perturb=false         # add 0.9/1.1 speed-perturbed copies of the training set
fbank_conf=conf/fbank.yaml  # feature configuration
kaldi_copy=false            # stage 2: also write a Kaldi feats.scp copy of the (lilcom) features
ali_from=pocketsphinx       # virtual phone labels: pocketsphinx or kaldi:DIR
ali_dir=                    # stage 3 output and stage 4 input (default: <data>/ali/train)
align_conf=conf/align.yaml  # aligner configuration
confs=gpu                   # system configs: gpu (conf/gpu, the paper's network) or cpu (conf/cpu, small)
systems="apm_am am"         # systems to train and score, each <system-conf-dir>/<system>.yaml
system_conf_dir=            # where the system configs live (default: conf/<confs>)
resume=true                 # stage 4: continue killed training runs (false: retrain from scratch)
ngpu=0                      # GPUs for training/extraction (torchrun when > 1)
jobs=auto                   # stages 4-5: systems trained/extracted at once, sharing the cores (auto: nproc; 1 with --ngpu > 0)
extract_nj=1                # stage 5: jobs per system through $decode_cmd (cmd.sh), each every N-th utterance
backend_conf=conf/backend.yaml  # back-end configuration
fuse=true                   # stage 7: fuse the systems' scores (2+ systems) on dev into exp/fusion
data=data                   # where data dirs, manifests, features, alignments go
exp=exp                     # where systems, logs and stage records go
results=                    # the table gathering all systems (stage 7; default: <exp>/RESULTS.md)

. ./path.sh
. utils/parse_options.sh
. ./cmd.sh  # where jobs run: train_cmd, decode_cmd, cuda_cmd (local by default)
. utils/stage.sh

recipe_check_options
if [ $# -ne 0 ]; then
  echo "$0: unexpected arguments: $*  (see --help)" >&2
  exit 1
fi
if [ "$confs" != cpu ] && [ "$confs" != gpu ]; then
  echo "$0: --confs takes cpu or gpu, got '$confs'" >&2
  exit 1
fi
if [ "$stage" -eq 0 ] && [ -z "$fleurs_root" ]; then
  echo "$0: stage 0 needs --fleurs-root DIR (FLEURS as 'lhotse download fleurs' writes it; see --help)" >&2
  exit 1
fi
recipe_caller_paths fleurs_root data exp results fbank_conf align_conf backend_conf system_conf_dir ali_dir
if [[ $given_options = *" ali-from "* && $ali_from = kaldi:* ]]; then
  ali_from=kaldi:$(recipe_caller_path "${ali_from#kaldi:}")
fi
system_conf_dir=${system_conf_dir:-conf/$confs}
results=${results:-$exp/RESULTS.md}
ali_dir=${ali_dir:-$data/ali/train}
train_set=train
dev_sets=dev
test_sets="test${open_langs:+ test_open}"  # test: closed-set; test_open: with held-out languages
scored_sets="$dev_sets $test_sets"
sets="$train_set $scored_sets"
mkdir -p "$exp"
recipe_lock_dirs  # one run at a time into this --exp (and --data, when stages 0-3 write it)

run_stage 0 prepare_fleurs --watch "$fleurs_root" local/prepare_fleurs.py ${nj:+--nj "$nj"} --skip-bad "$skip_bad" \
  --langs "$langs" --open-langs "$open_langs" "$fleurs_root" "$data"

recipe_stages_1_to_7
