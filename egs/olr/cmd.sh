# Where the recipe's jobs run, as in Kaldi's cmd.sh: sourced by run.sh. Each *_cmd is a
# dispatcher with Kaldi's calling convention, `$cmd [opts] JOB=1:N log/name.JOB.log command`
# (utils/dispatch.sh; docs/cluster.md):
#   local  jobs run on this machine, at most the cores at once (like run.pl; the default)
#   slurm  one `sbatch --wait --array=1-N` per call (like slurm.pl); options below become
#          sbatch's --mem, --cpus-per-task (--num-threads), --gres=gpu:G (--gpu), --time
#   sge    one `qsub -sync y -t 1-N` per call (like queue.pl)
# Site options (partition, account, QoS) go in --queue-opts, e.g.
#   --queue-opts "--partition=cpu --account=myproject".
# APM_CMD_BACKEND in the environment overrides cmd_backend (the tests use it).
cmd_backend=${APM_CMD_BACKEND:-local}

export train_cmd="dispatch.sh $cmd_backend --mem 2G"   # stages 1-3: manifests, features, alignment
export decode_cmd="dispatch.sh $cmd_backend --mem 4G"  # stage 5: x-vector extraction
export cuda_cmd="dispatch.sh $cmd_backend --mem 4G"    # stage 4: training (--gpu N added with --ngpu N)
