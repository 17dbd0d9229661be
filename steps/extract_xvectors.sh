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
--ngpu N > 1 shards the cuts over N torchrun processes."

ngpu=0             # 0: one process (GPU if present); N: N processes (torchrun)
model=final.pt     # checkpoint inside <exp-dir>
batch_frames=0     # padded frames per forward pass (0: 4000 on CPU, 65536 on a GPU)

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
"${launcher[@]}" apm.bin.extract_xvectors --device "$device" --model "$model" \
  --batch-frames "$batch_frames" --log-file "$1/log/extract.log" "$@"
