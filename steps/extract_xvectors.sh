#!/usr/bin/env bash
# Stage 5: x-vectors and language-branch scores of feature sets with a trained system.
set -euo pipefail

help_message="Usage: $0 [options] <exp-dir> <fbank-dir> <out-dir> [<fbank-dir> <out-dir> ...]
e.g.: $0 --ngpu 0 exp/apm_am data/fbank/task_full exp/apm_am/xvectors/task_full
Writes each <out-dir>/xvector.{ark,scp} (float32 x-vectors from <exp-dir>/final.pt) and
logits.{ark,scp} (the language branch's margin-free scores, in languages.txt order); one
process loads the model once for all the sets and batches utterances sorted by length. A set
whose outputs are newer than the model is kept (a killed run resumes).
Speed-perturbed training copies (<utt>_sp<factor>) are skipped.
--ngpu N > 1 shards the cuts over N torchrun processes; --nj N > 1 over N jobs through --cmd
(cmd.sh's \$decode_cmd), merged afterwards."

ngpu=0             # 0: one process (GPU if present); N: N processes (torchrun)
model=final.pt     # checkpoint inside <exp-dir>
batch_frames=0     # padded frames per forward pass (0: 4000 on CPU, 65536 on a GPU)
nj=1               # jobs sharing the cuts (each every N-th utterance), merged afterwards
cmd=${decode_cmd:-dispatch.sh local}  # job dispatcher (utils/dispatch.sh; cmd.sh sets $decode_cmd)
log_dir=           # the jobs' logs: <log-dir>/extract.JOB.log (empty: <exp-dir>/log/jobs)

# Physical path: steps/ is reached through a symlink from the recipe.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 3 ] || [ $(( $# % 2 )) -ne 1 ]; then
  echo "$help_message" >&2
  exit 1
fi

device=auto
[ "$ngpu" -eq 1 ] && device=cuda
launcher=(python -m)
if [ "$ngpu" -gt 1 ]; then
  launcher=(python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "$ngpu" -m)
fi
opts=(--device "$device" --model "$model" --batch-frames "$batch_frames")
gpus=()
[ "$ngpu" -gt 0 ] && gpus=(--gpu "$ngpu")
log_dir=${log_dir:-$1/log/jobs}
if [ "$nj" -gt 1 ]; then
  if [ "$ngpu" -gt 1 ]; then
    echo "$0: --nj $nj with --ngpu $ngpu: shard over jobs or over torchrun processes, not both" >&2
    exit 1
  fi
  $cmd ${gpus[@]+"${gpus[@]}"} JOB=1:"$nj" "$log_dir/extract.JOB.log" "${launcher[@]}" apm.bin.extract_xvectors \
    "${opts[@]}" --nj "$nj" --job JOB "$@"
  python -m apm.bin.extract_xvectors "${opts[@]}" --device cpu --nj "$nj" "$@"  # merges the parts
else
  $cmd ${gpus[@]+"${gpus[@]}"} "$log_dir/extract.log" "${launcher[@]}" apm.bin.extract_xvectors "${opts[@]}" \
    --log-file "$1/log/extract.log" "$@"
fi
