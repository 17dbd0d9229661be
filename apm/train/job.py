"""Stage 4 as a function: train one system into `exp/<system>/`.

Layout of the experiment directory:
  config.yaml          the resolved configuration (every key, and the seed)
  inputs.sha256        fingerprint of the features and alignments the checkpoints were trained on
  languages.txt        training languages, one per line: the class order of the classifier
  phones.txt           copy of the alignment's phone table (with a phone branch)
  checkpoints/epoch_<N>.pt   after every epoch, atomically (resume point)
  checkpoints/running.pt     every `train.checkpoint_interval` steps within an epoch (resume
                       point inside the epoch; ignored once a later epoch checkpoint exists)
  final.pt             average of the last `train.average_last` epoch checkpoints, BatchNorm
                       statistics re-estimated on `train.bn_recalibration_batches` batches
  train_log.jsonl      one record per epoch (losses, accuracies, margins, confidences, lr)
  train_curves.png     the curves of train_log.jsonl
  tensorboard/         the same as TensorBoard scalars, plus per-step loss and lr
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from apm.features.augment import AugmentConfig, Augmenter, resolve_augment
from apm.features.fbank import stored_feature_config
from apm.nnet import checkpoint
from apm.train.config import AMP_ALIASES, dump_config
from apm.train.data import Corpus, load_corpus, split_validation
from apm.train.monitor import Monitor, plot_curves, write_history
from apm.train.seed_batch import SeedBatch
from apm.train.trainer import Trainer
from apm.utils.dist import DistEnv, barrier, init_distributed, shutdown
from apm.utils.done import cached_signature, mark_done, recorded, signature
from apm.utils.errors import ApmError
from apm.utils.io import atomic_write

log = logging.getLogger(__name__)

# Keys that change how fast a run goes, not what it computes: a resumed run may change them
# (`data` too: memory and stream give the same batches).
RUNTIME_KEYS = ("num_workers", "threads", "log_interval", "compile", "pin_memory", "data",
                "checkpoint_interval")  # fmt: skip
RUNNING = "running.pt"  # the mid-epoch checkpoint
# (path, size, mtime_ns) -> input signature, so that a resumed start skips re-reading the store
SIGNATURE_CACHE = "inputs.sha256.cache.json"
OUTPUTS = ("checkpoints", "final.pt", "train_log.jsonl", "train_curves.png", "tensorboard")


@dataclass
class TrainJob:
    config: dict  # resolved (apm.train.config.load_system_config)
    fbank_dir: Path
    exp_dir: Path
    ali_dir: Path | None = None
    resume: bool = True  # continue from the last epoch checkpoint; False starts over
    skip_unaligned: bool = False  # skip (and count) cuts without an alignment
    device: str = "auto"  # auto | cpu | cuda


def _comparable(cfg: dict) -> dict:
    # stream_buffer/stream_pool: keys of the old streamed reader, in older config.yaml files
    runtime = {*RUNTIME_KEYS, "stream_buffer", "stream_pool"}
    train = {k: v for k, v in cfg["train"].items() if k not in runtime}
    train["amp"] = AMP_ALIASES.get(train.get("amp"), train.get("amp"))  # older boolean configs
    return {"model": cfg["model"], "loss": cfg["loss"], "train": train, "seed": cfg["seed"],
            "augment": cfg.get("augment", AugmentConfig().to_dict())}  # fmt: skip


def input_signature(fbank_dir: Path, ali_dir: Path | None, cache: Path | None = None) -> str:
    """`apm.utils.done.signature` of the training cuts, the feature store they name, and the
    VAD/label scp files and the arks they name. A rerun of stage 4 after stage 2 or 3 produced
    other data must retrain, not resume. With `cache` (a JSON file), the value is reused while
    no file changed size or modification time (`apm.utils.done.cached_signature`): a resumed
    start does not re-read the whole store."""
    files = [
        fbank_dir / "cuts.jsonl.gz",
        *sorted(p for p in (fbank_dir / "storage").rglob("*") if p.is_file()),
        fbank_dir / "vad.scp",
        # a training set given as Shar shards (apm.bin.export_shar)
        *sorted(fbank_dir.glob("cuts.*.jsonl*")),
        *sorted(fbank_dir.glob("*.*.tar")),
    ]
    if ali_dir is not None:
        files += [ali_dir / "ali.scp", ali_dir / "phones.txt"]
    if cache is None:
        return signature(files, follow_scp=True)
    return cached_signature(files, follow_scp=True, cache=cache)


def prepare_exp_dir(job: TrainJob) -> None:
    """Check that a resumed run trains the same system on the same data; start over when the
    data changed, or without resume."""
    exp = job.exp_dir
    saved = exp / "config.yaml"
    inputs = input_signature(job.fbank_dir, _alignment_dir(job), exp / SIGNATURE_CACHE)
    signature_file = exp / "inputs.sha256"
    if (
        job.resume
        and checkpoint.list_checkpoints(exp)
        and recorded(signature_file) not in (None, inputs)
    ):
        log.warning(
            "%s: the features or alignments changed since its checkpoints were written; "
            "training starts over",
            exp,
        )
        job.resume = False
    if job.resume and checkpoint.list_checkpoints(exp) and saved.is_file():
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
        if _comparable(old) != _comparable(job.config):
            raise ApmError(
                f"{saved}: {exp} holds checkpoints of another configuration or seed; "
                "train into a new directory, or pass --resume false to start over"
            )
    if not job.resume:
        for name in OUTPUTS:
            path = exp / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    exp.mkdir(parents=True, exist_ok=True)
    with atomic_write(saved, encoding="utf-8") as f:
        f.write(dump_config(job.config))
    mark_done(signature_file, inputs)


def _write_inventories(job: TrainJob, languages: list[str]) -> None:
    with atomic_write(job.exp_dir / "languages.txt", encoding="utf-8") as f:
        f.write("".join(f"{lang}\n" for lang in languages))
    if job.ali_dir is not None:
        with atomic_write(job.exp_dir / "phones.txt", encoding="utf-8") as f:
            f.write((job.ali_dir / "phones.txt").read_text(encoding="utf-8"))


def _alignment_dir(job: TrainJob) -> Path | None:
    if not job.config["model"]["phone_branch"]:
        if job.ali_dir is not None:
            log.info("model has no phone branch: alignments in %s are not used", job.ali_dir)
        return None
    if job.ali_dir is None:
        raise ApmError(
            "the model has a phone branch (model.phone_branch true) but no --ali-dir was "
            "given; pass the alignment directory of stage 3"
        )
    return job.ali_dir


def _resume(trainer: Trainer, job: TrainJob) -> None:
    """Load the latest resume point: the last epoch checkpoint, or the mid-epoch checkpoint
    when it is of the epoch after it."""
    found = checkpoint.list_checkpoints(job.exp_dir) if job.resume else {}
    running = checkpoint.checkpoint_dir(job.exp_dir) / RUNNING
    last = list(found)[-1] if found else 0
    if job.resume and running.is_file():
        state = checkpoint.load(running)
        if state["epoch"] == last:
            trainer.load_state(state, str(running))
            log.info("resuming epoch %d at step %d (%s)", last + 1, trainer.step, running)
            return
    if found:
        trainer.load_state(checkpoint.load(found[last]), str(found[last]))
        log.info("resuming after epoch %d (%s)", last, found[last])


def _save_running(job: TrainJob, env: DistEnv):
    """The trainer's `on_step`: a mid-epoch checkpoint every `train.checkpoint_interval`
    steps (none with 0)."""
    interval = job.config["train"]["checkpoint_interval"]

    def save(trainer: Trainer) -> None:
        if trainer.step % interval:
            return
        if env.is_main:
            checkpoint.save(checkpoint.checkpoint_dir(job.exp_dir) / RUNNING, trainer.state())
        barrier(env)

    return save if interval else None


def _monitor(trainer: Trainer, job: TrainJob, env: DistEnv) -> Monitor:
    return Monitor(job.exp_dir, trainer.epoch * trainer.steps_per_epoch, env.is_main)


def _epoch_done(
    trainer: Trainer, job: TrainJob, env: DistEnv, monitor: Monitor, record: dict
) -> None:
    """After each epoch: its checkpoint, train_log.jsonl, monitor record, curves, log line."""
    if env.is_main:
        path = checkpoint.checkpoint_dir(job.exp_dir) / f"epoch_{trainer.epoch}.pt"
        checkpoint.save(path, trainer.state())
        write_history(job.exp_dir, trainer.history)
        monitor.epoch(record, trainer.epoch * trainer.steps_per_epoch)
        plot_curves(trainer.history, job.exp_dir / "train_curves.png")
        _log_record(record, job.config["seed"])
    barrier(env)


def _train_epochs(trainer: Trainer, job: TrainJob, env: DistEnv) -> None:
    epochs = job.config["train"]["epochs"]
    monitor = _monitor(trainer, job, env)
    on_step = _save_running(job, env)
    try:
        while trainer.epoch < epochs:
            _epoch_done(trainer, job, env, monitor, trainer.run_epoch(monitor, on_step))
    finally:
        monitor.close()


def _log_record(r: dict, seed: int) -> None:
    def fmt(split: dict) -> str:
        phone = f", phone acc {split['phone_acc']:.3f}" if "phone_acc" in split else ""
        return f"loss {split['loss']:.3f}, lang acc {split['lang_acc']:.3f}{phone}"

    valid = f"; valid {fmt(r['valid'])}" if "valid" in r else ""
    log.info(
        "epoch %d (seed %d): train %s%s; %.0f frames/s, %.1f s",
        r["epoch"],
        seed,
        fmt(r["train"]),
        valid,
        r["frames_per_second"],
        r["seconds"],
    )


def _write_final(trainer: Trainer, job: TrainJob) -> None:
    """Average the last checkpoints, re-estimate BatchNorm statistics, save `final.pt`."""
    final = checkpoint.average_last(job.exp_dir, job.config["train"]["average_last"])
    trainer.model.load_state_dict(final["model"])
    trainer.crit.load_state_dict(final["crit"])
    used = trainer.recalibrate_batchnorm(job.config["train"]["bn_recalibration_batches"])
    final["model"] = trainer.model.state_dict()
    final["bn_recalibration_batches"] = used
    checkpoint.save(job.exp_dir / "final.pt", final)
    log.info(
        "final.pt: epochs %s averaged, BatchNorm statistics from %d batches",
        final["averaged_epochs"],
        used,
    )


def _load_data(job: TrainJob) -> Corpus:
    """The training set, held in memory or indexed for reading while training (`train.data`)."""
    tcfg = job.config["train"]
    return load_corpus(
        job.fbank_dir,
        _alignment_dir(job),
        cmn=tcfg["cmn"],
        min_utt_frames=tcfg["min_utt_frames"],
        skip_unaligned=job.skip_unaligned,
        cache=tcfg["data"] == "memory",
    )


def _augmenter(job: TrainJob) -> Augmenter | None:
    """The chunk augmenter of an `augment:` section with prob > 0 (with the stage-2 feature
    config of the set, which recomputes fbank), else None."""
    augment = resolve_augment(job.config.get("augment"), str(job.exp_dir / "config.yaml"))
    if not augment.enabled:
        return None
    return Augmenter(augment, stored_feature_config(job.fbank_dir), job.config["seed"])


def _make_trainer(job: TrainJob, corpus: Corpus, env: DistEnv) -> Trainer:
    """The trainer of `job` on `corpus`, resumed from its latest checkpoint."""
    if env.is_main:
        _write_inventories(job, corpus.languages)
    train_pool, valid_pool = split_validation(
        corpus, job.config["train"]["valid_fraction"], job.config["seed"]
    )
    log.info(
        "seed %d: %d training and %d validation utterances, %d languages, %d phones, %d frames",
        job.config["seed"],
        len(train_pool),
        len(valid_pool),
        len(corpus.languages),
        corpus.num_phones,
        int(corpus.lengths[train_pool].sum()),
    )
    trainer = Trainer(job.config, corpus, train_pool, valid_pool, job.exp_dir, env, _augmenter(job))
    _resume(trainer, job)
    return trainer


def _finish(trainer: Trainer, job: TrainJob, env: DistEnv) -> Path:
    final = job.exp_dir / "final.pt"
    if env.is_main:
        _write_final(trainer, job)
        write_history(job.exp_dir, trainer.history)
        plot_curves(trainer.history, job.exp_dir / "train_curves.png")
    barrier(env)
    return final


def run_training(job: TrainJob) -> Path:
    """Train (or resume) the system of `job`; returns the path of `final.pt`."""
    env = init_distributed(job.device, job.config["train"]["threads"])
    try:
        if env.is_main:
            prepare_exp_dir(job)
        barrier(env)
        trainer = _make_trainer(job, _load_data(job), env)
        _train_epochs(trainer, job, env)
        return _finish(trainer, job, env)
    finally:
        shutdown(env)


def run_seed_batch(jobs: Sequence[TrainJob]) -> list[Path]:
    """Train (or resume) one system with several seeds at once, one job per seed, in one
    process (`apm.train.seed_batch`: the models share each step's forward and backward, and
    the training set is loaded once); returns the `final.pt` paths. Each job's directory
    ends up as a run of `run_training` for that seed would leave it."""
    first = jobs[0]
    shared = ("fbank_dir", "ali_dir", "device", "skip_unaligned")
    for job in jobs[1:]:
        differ = [k for k in shared if getattr(job, k) != getattr(first, k)]
        if differ:
            raise ApmError(
                f"{job.exp_dir}: a seed batch trains on one data set, but its "
                f"{', '.join(differ)} differ from {first.exp_dir}'s"
            )
    dirs = [job.exp_dir.resolve() for job in jobs]
    if len(set(dirs)) < len(dirs):
        raise ApmError("a seed batch needs one experiment directory per seed; some repeat")
    env = init_distributed(first.device, first.config["train"]["threads"])
    try:
        for job in jobs:
            prepare_exp_dir(job)
        corpus = _load_data(first)
        trainers = [_make_trainer(job, corpus, env) for job in jobs]
        batch = SeedBatch(trainers)
        monitors = [_monitor(t, job, env) for t, job in zip(trainers, jobs, strict=True)]
        on_steps = [_save_running(job, env) for job in jobs]
        epochs = first.config["train"]["epochs"]
        try:
            while any(t.epoch < epochs for t in trainers):
                for trainer, record in batch.run_epoch(monitors, on_steps):
                    k = trainers.index(trainer)
                    _epoch_done(trainer, jobs[k], env, monitors[k], record)
        finally:
            for monitor in monitors:
                monitor.close()
        return [_finish(t, job, env) for t, job in zip(trainers, jobs, strict=True)]
    finally:
        shutdown(env)
