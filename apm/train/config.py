"""System configuration (`conf/<system>.yaml`): sections, defaults of the `train` and `extract`
sections, validation.

The `model` and `loss` sections belong to `apm.nnet` and `apm.losses` (their trunk's defaults and
LOSS_DEFAULTS; values are checked when the model and loss are built); this module owns `train`
and `extract`. Every key left out takes its default, and the resolved configuration (all keys
of all sections, plus the seed) is what `exp/<system>/config.yaml` records.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from apm.features.augment import resolve_augment
from apm.losses import LOSS_DEFAULTS, build_loss
from apm.nnet.xvector import resolve_model_config
from apm.utils.config import check_bool, check_int, check_number, load_yaml, merge_section
from apm.utils.errors import ApmError

SECTIONS = ("model", "loss", "train", "extract", "augment")

SPECAUGMENT_DEFAULTS: dict[str, Any] = {
    "freq_masks": 1,  # number of frequency bands zeroed per chunk
    "freq_width": 6,  # widest band, in feature bins
    "time_masks": 1,  # number of time spans zeroed per chunk
    "time_width": 20,  # longest span, in frames
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    # Chunks per optimiser step over all processes together: N processes take every N-th chunk,
    # so one config trains the same way on 1 or 8 devices.
    "batch_size": 64,
    "chunk_min_frames": 200,  # every batch has one chunk length drawn from [min, max]
    "chunk_max_frames": 400,
    # Utterances with fewer VAD-kept frames are skipped (and counted); longer ones that are
    # still shorter than a batch's chunk length are padded with masked frames.
    "min_utt_frames": 50,
    "cmn": "utterance",  # utterance | sliding | chunk | none (apm.train.data.select_and_normalize)
    "optimizer": "adam",  # adam | sgd
    "lr": 1e-3,
    "momentum": 0.9,  # sgd only
    "weight_decay": 1e-5,
    "warmup_epochs": 0.5,  # linear warm-up from lr/100
    "lr_decay": "cosine",  # cosine | exponential | none, from lr down to lr * final_lr_ratio
    "final_lr_ratio": 0.05,
    "grad_clip": 5.0,  # max gradient norm; 0 disables
    "language_balanced": False,  # draw languages uniformly instead of by amount of speech
    "specaugment": None,  # null, or a mapping with keys of SPECAUGMENT_DEFAULTS
    "valid_fraction": 0.05,  # utterances per language held out for validation
    "average_last": 3,  # final.pt averages the last N epoch checkpoints
    "bn_recalibration_batches": 50,  # then re-estimates BatchNorm statistics on N batches
    # Where chunks are read from; both give the same batches (apm.train.data). memory: every
    # VAD-kept frame loaded once into one array (fastest, RAM grows with the corpus); stream:
    # each chunk's utterance read from the feature store when a batch needs it (RAM flat).
    "data": "memory",
    # Steps between mid-epoch checkpoints (checkpoints/running.pt); 0: at epoch ends only. A
    # run resumed from one is tensor-identical to an uninterrupted run.
    "checkpoint_interval": 0,
    "amp": "bf16",  # none | bf16 | fp16: autocast dtype on CUDA (ignored on CPU)
    "compile": False,  # torch.compile the model on CUDA (skipped, with a log line, on CPU)
    "num_workers": 0,  # DataLoader workers building batches (0: in the training process)
    "pin_memory": True,  # pinned host batches for asynchronous copies (CUDA only)
    "threads": 0,  # torch CPU threads per process; 0: the cores divided by the processes
    "log_interval": 20,  # steps between TensorBoard step scalars
}

EXTRACT_DEFAULTS: dict[str, Any] = {
    # Model output written as the x-vector: `embedding` (first segment layer, before its ReLU,
    # Kaldi's x-vector) or `classifier_input` (second segment layer, what the classifier sees).
    "layer": "embedding",
    # Longer utterances are cut into equal, overlapping-at-most-by-one-chunk pieces of at most
    # this many frames; their embeddings are averaged.
    "max_chunk_frames": 1000,
    # With fewer VAD-kept frames than this, all frames are used (counted in the log).
    "min_voiced_frames": 20,
    "threads": 0,  # torch CPU threads per process; 0: the cores divided by the processes
}

EMBEDDING_LAYERS = ("embedding", "classifier_input")

CHOICES = {
    "cmn": ("utterance", "sliding", "chunk", "none"),
    "optimizer": ("adam", "sgd"),
    "lr_decay": ("cosine", "exponential", "none"),
    "data": ("memory", "stream"),
    "amp": ("none", "bf16", "fp16"),
}
# Older configs wrote `amp` as a boolean: true meant bf16 (fp16 where bf16 is unsupported).
AMP_ALIASES = {True: "bf16", False: "none"}


# Typed keys of `train` (every other key is a choice, a boolean or `specaugment`): integers
# with their minimum, and floats with their range (None: unbounded; strict: minimum excluded).
TRAIN_INTS = {
    "epochs": 1,
    "batch_size": 1,
    "chunk_min_frames": 1,
    "chunk_max_frames": 1,
    "min_utt_frames": 1,
    "average_last": 1,
    "bn_recalibration_batches": 0,
    "num_workers": 0,
    "threads": 0,
    "log_interval": 1,
    "checkpoint_interval": 0,
}
# Keys that meant something once and no longer do: an error saying why, not silently ignored.
RETIRED_TRAIN_KEYS = {
    "stream_buffer": "the streamed reader's shuffle buffer",
    "stream_pool": "the streamed reader's pool of prepared utterances",
}
TRAIN_FLOATS = {  # key: (minimum, maximum, strict)
    "lr": (0.0, None, True),
    "momentum": (0.0, 1.0, False),
    "weight_decay": (0.0, None, False),
    "warmup_epochs": (0.0, None, False),
    "final_lr_ratio": (0.0, 1.0, False),
    "grad_clip": (0.0, None, False),
    "valid_fraction": (0.0, None, False),
}
EXTRACT_INTS = {"max_chunk_frames": 1, "min_voiced_frames": 1, "threads": 0}


def _check_retired(raw_train: dict, where: str) -> None:
    for key, meaning in RETIRED_TRAIN_KEYS.items():
        if key in raw_train:
            raise ApmError(
                f"{where}: train.{key} ({meaning}) is no longer used: memory and streamed "
                "training now build the same batches from one epoch plan, reading each "
                f"chunk's utterance directly (apm.train.batches); remove train.{key}"
            )


def _check_train(train: dict, where: str) -> None:
    if isinstance(train["amp"], bool):
        train["amp"] = AMP_ALIASES[train["amp"]]
    for key, choices in CHOICES.items():
        if train[key] not in choices:
            raise ApmError(f"{where}: train.{key} is '{train[key]}'; choose one of {choices}")
    for key, minimum in TRAIN_INTS.items():
        train[key] = check_int(train[key], key, "train", minimum=minimum, path=where)
    for key, (minimum, maximum, strict) in TRAIN_FLOATS.items():
        train[key] = check_number(
            train[key], key, "train", minimum=minimum, maximum=maximum, strict=strict, path=where
        )
    for key in ("language_balanced", "compile", "pin_memory"):
        check_bool(train[key], key, "train", path=where)
    if train["chunk_max_frames"] < train["chunk_min_frames"]:
        raise ApmError(f"{where}: train.chunk_max_frames is below train.chunk_min_frames")
    if not 0 < train["min_utt_frames"] <= train["chunk_max_frames"]:
        raise ApmError(f"{where}: train.min_utt_frames must be in (0, chunk_max_frames]")
    if not 0 <= train["valid_fraction"] < 0.5:
        raise ApmError(f"{where}: train.valid_fraction must be in [0, 0.5)")
    if train["specaugment"] is not None:
        if not isinstance(train["specaugment"], dict):
            raise ApmError(f"{where}: train.specaugment must be null or a mapping")
        spec = merge_section(
            train["specaugment"], SPECAUGMENT_DEFAULTS, f"{where}: train.specaugment"
        )
        for key in SPECAUGMENT_DEFAULTS:
            spec[key] = check_int(spec[key], key, "train.specaugment", path=where)
        train["specaugment"] = spec


def resolve_config(raw: dict, where: str, seed: int | None = None) -> dict:
    """Fill in the defaults of `train`/`extract`, validate them and record `seed`."""
    if not isinstance(raw, dict):
        raise ApmError(f"{where}: expected a mapping with sections {SECTIONS}")
    unknown = sorted(set(raw) - set(SECTIONS) - {"seed"})
    if unknown:
        raise ApmError(f"{where}: unknown sections {unknown}; valid sections are {SECTIONS}")
    for section in ("model", "loss"):
        if not isinstance(raw.get(section), dict):
            raise ApmError(f"{where}: missing section '{section}'")
    if isinstance(raw.get("train"), dict):
        _check_retired(raw["train"], where)
    cfg = {
        "model": resolve_model_config(raw["model"], f"{where}: model"),
        "loss": merge_section(raw["loss"], LOSS_DEFAULTS, f"{where}: loss"),
        "train": merge_section(raw.get("train") or {}, TRAIN_DEFAULTS, f"{where}: train"),
        "extract": merge_section(raw.get("extract") or {}, EXTRACT_DEFAULTS, f"{where}: extract"),
        "augment": resolve_augment(raw.get("augment"), where).to_dict(),
    }
    _check_train(cfg["train"], where)
    try:  # the loss section's values, checked now (not when training starts): a tiny build
        build_loss(cfg["loss"], embed_dim=8, num_langs=2)
    except ApmError as e:
        raise ApmError(f"{where}: {e}") from None
    for key, minimum in EXTRACT_INTS.items():
        cfg["extract"][key] = check_int(
            cfg["extract"][key], key, "extract", minimum=minimum, path=where
        )
    if cfg["extract"]["layer"] not in EMBEDDING_LAYERS:
        raise ApmError(f"{where}: extract.layer must be one of {EMBEDDING_LAYERS}")
    if cfg["extract"]["max_chunk_frames"] < cfg["train"]["chunk_min_frames"]:
        raise ApmError(f"{where}: extract.max_chunk_frames is below train.chunk_min_frames")
    if seed is None:
        seed = check_int(raw.get("seed", 0), "seed", "", minimum=0, path=where)
    cfg["seed"] = int(seed)
    return cfg


def load_system_config(path: str | os.PathLike, seed: int | None = None) -> dict:
    """Read and resolve a system YAML; `seed` (from the command line) overrides the file's."""
    return resolve_config(load_yaml(path, "system config"), str(path), seed)


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
