#!/usr/bin/env bash
# Stage 4: train one multi-task x-vector system into <exp-dir> (config.yaml, languages.txt,
# checkpoints/epoch_<N>.pt, final.pt, train_log.jsonl, train_curves.png, tensorboard/).
set -euo pipefail

help_message="Usage: $0 [options] --config <system.yaml> <fbank-dir> <exp-dir>
       $0 [options] --config <system.yaml> --seeds \"S1 S2 ...\" <fbank-dir> <exp-dir-1> <exp-dir-2> ...
e.g.: $0 --config conf/apm_am.yaml --seed 777 --ngpu 0 --ali-dir data/ali/train \\
        data/fbank/train exp/apm_am
--seeds trains those seeds of the system together in one process (a seed batch: one vmapped
forward/backward per step over the stacked models, for a GPU; --ngpu 0 or 1), one exp-dir per
seed; the log goes to the first exp-dir's log/train.log.
--config names the system YAML (sections model, loss, train, extract).
A rerun resumes after the last epoch checkpoint (a killed run loses at most one epoch).
--ngpu 0 runs one process, on the GPU if there is one; --ngpu N > 1 runs N DDP processes
with torchrun (gloo on CPU when there is no GPU). Inside a Slurm allocation of several nodes
(or --ngpu > 1), srun starts one torchrun per node with the rendezvous taken from the
allocation (docs/cluster.md). Without Slurm, multi-node as in WeSpeaker: run the same command
on every node with --nnodes N --node-rank R --master-addr <node-0 host>."

config=                # system YAML
seed=777               # random seed (model init, chunk sampling, validation split)
seeds=                 # several seeds trained together (seed batch), one exp-dir each
ngpu=0                 # 0: one process (GPU if present); N: N processes per node (torchrun)
ali_dir=               # stage 3 output (ali.scp, phones.txt); needed with a phone branch
resume=true            # continue after the last epoch checkpoint; false: start over
skip_unaligned=false   # skip (and count) training cuts without an alignment
nnodes=1               # nodes taking part (torchrun --nnodes)
node_rank=0            # rank of this node (torchrun --node_rank)
master_addr=localhost  # host of node 0 (multi-node)
master_port=29500      # free port on node 0 (multi-node)

# Physical path: steps/ is reached through a symlink from the recipe.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

read -ra seed_list <<< "$seeds"
if [ -z "$config" ] || [ $# -ne $(( ${#seed_list[@]} > 0 ? ${#seed_list[@]} + 1 : 2 )) ]; then
  echo "$help_message" >&2
  exit 1
fi
fbank_dir=$1
exp_dir=$2
exp_dirs=("${@:2}")
seed_opts=(--seed "$seed")
if [ ${#seed_list[@]} -gt 0 ]; then
  if [ "$ngpu" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
    echo "$0: --seeds trains in one process: use --ngpu 0 or 1 (and one node)" >&2
    exit 1
  fi
  seed_opts=(--seeds "${seed_list[*]}")
fi

device=auto
[ "$ngpu" -eq 1 ] && device=cuda
launcher=(python -m)
if [ -n "${SLURM_JOB_ID:-}" ] && [ "$nnodes" -eq 1 ] && { [ "$ngpu" -gt 1 ] || [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; }; then
  # Inside a Slurm allocation (cmd.sh's $cuda_cmd on the slurm backend, or salloc): srun one
  # torchrun per node, the rendezvous on the allocation's first node (apm.utils.dispatch).
  launcher_lines=$(python -m apm.utils.dispatch torchrun --nproc-per-node "$((ngpu > 1 ? ngpu : 1))")
  mapfile -t launcher <<< "$launcher_lines"
elif [ "$ngpu" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
  nproc=$((ngpu > 1 ? ngpu : 1))
  if [ "$nnodes" -gt 1 ]; then
    launcher=(python -m torch.distributed.run --nnodes "$nnodes" --node_rank "$node_rank"
              --master_addr "$master_addr" --master_port "$master_port" --nproc_per_node "$nproc" -m)
  else
    launcher=(python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "$nproc" -m)
  fi
fi

"${launcher[@]}" apm.bin.train_xvector --config "$config" "${seed_opts[@]}" --resume "$resume" \
  --skip-unaligned "$skip_unaligned" --device "$device" ${ali_dir:+--ali-dir "$ali_dir"} \
  --log-file "$exp_dir/log/train.log" "$fbank_dir" "${exp_dirs[@]}"
