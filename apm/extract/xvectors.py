"""Stage 5: x-vectors and language-branch scores of a feature set from a trained system.

For every cut (speed-perturbed copies `<utt>_sp<factor>` excepted: they only serve training)
the features get the training-time preparation (`apm.features.readers`: VAD, then CMN); an
utterance with fewer than `extract.min_voiced_frames` voiced frames keeps all its frames
instead (counted). An utterance longer than `extract.max_chunk_frames` is cut into the fewest
equal-length chunks of at most that length, evenly spread (neighbours overlap by less than a
chunk); the x-vector is the mean of the chunk x-vectors and the scores are the classifier's
margin-free outputs on the mean of the chunk classifier inputs.

Outputs in the set's directory under `exp/<system>/xvectors/<set>/`:
  xvector.ark/scp   float32 [embed_dim] per utterance: the model output `extract.layer` names
                    (default `embedding`, the first segment layer: Kaldi's x-vector)
  logits.ark/scp    float32 [num_languages] per utterance, in `languages.txt` order
  confidence.ark/scp  float32 [1] per utterance, systems with a phone branch only: the
                    phonetic confidence c_i of the APM margin (mean max phone posterior over
                    the valid frames, as in training, averaged over the chunks); the report
                    draws the margin distribution m * c_i from it
  .done             the signature of the inputs (model, cuts, VAD) they were made from
                    (`apm.utils.done`): a rerun keeps a set whose inputs are unchanged
Under torchrun, process r embeds every N-th cut; process 0 merges the parts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import kaldiio
import numpy as np
import torch

from apm.features.readers import chunk_cmn, is_speed_perturbed, prepare_frames, read_cuts, read_scp
from apm.losses import build_loss, phone_confidence
from apm.nnet import ModelOutput, build_model, checkpoint
from apm.utils.arkio import write_ark_scp
from apm.utils.dist import DistEnv, all_reduce_sum, barrier, init_distributed, shutdown
from apm.utils.done import is_done, mark_done, signature
from apm.utils.errors import ApmError
from apm.utils.log import progress

log = logging.getLogger(__name__)

OUTPUTS = ("xvector", "logits", "confidence")
DONE = ".done"  # record of the inputs the outputs were made from (apm.utils.done)


# Padded frames per forward pass (chunks sorted by length), by device type. On CPU large
# batches lose to cache misses (local/bench_extract.py: 4000 frames 1.06x one utterance at a
# time, 32000 frames 0.71x); a GPU wants many frames per pass.
BATCH_FRAMES = {"cpu": 4000, "cuda": 65536}
WINDOW_UTTS = 512  # utterances prepared (and sorted) at a time: bounds memory


@dataclass
class ExtractJob:
    exp_dir: Path
    fbank_dir: Path
    out_dir: Path
    device: str = "auto"  # auto | cpu | cuda
    model_file: str = "final.pt"  # inside exp_dir
    batch_frames: int = 0  # 0: BATCH_FRAMES of the device
    # further (fbank_dir, out_dir) sets embedded by the same process with the same model
    more_sets: tuple[tuple[Path, Path], ...] = ()
    nj: int = 1  # dispatcher jobs sharing the cuts (utils/dispatch.sh JOB=1:nj)
    job: int | None = None  # this job's number; None with nj > 1: merge the jobs' parts

    def sets(self) -> list[tuple[Path, Path]]:
        return [(Path(self.fbank_dir), Path(self.out_dir)), *self.more_sets]


@dataclass
class System:
    model: torch.nn.Module
    crit: torch.nn.Module
    config: dict
    languages: list[str]
    feat_dim: int
    device: torch.device


def load_system(state: dict, device: torch.device) -> System:
    """The trained model and loss of a `final.pt` state, in eval mode on `device`."""
    cfg, meta = state["config"], state["meta"]
    model = build_model(cfg["model"], meta["feat_dim"], meta["num_phones"])
    crit = build_loss(cfg["loss"], model.embed_dim, len(meta["languages"]))
    model.load_state_dict(state["model"])
    crit.load_state_dict(state["crit"])
    model.to(device).eval()
    crit.to(device).eval()
    return System(model, crit, cfg, meta["languages"], meta["feat_dim"], device)


def chunk_starts(num_frames: int, max_chunk: int) -> tuple[np.ndarray, int]:
    """Starts and common length of the fewest equal chunks of at most `max_chunk` frames
    covering `num_frames` frames."""
    count = math.ceil(num_frames / max_chunk)
    length = math.ceil(num_frames / count)
    return np.round(np.linspace(0, num_frames - length, count)).astype(np.int64), length


def _chunks(system: System, feats: np.ndarray) -> list[np.ndarray]:
    starts, length = chunk_starts(len(feats), system.config["extract"]["max_chunk_frames"])
    return [chunk_cmn(feats[s : s + length], system.config["train"]["cmn"]) for s in starts]


def _batches(lengths: list[int], batch_frames: int) -> list[list[int]]:
    """Item indices, longest first, packed so that count x longest <= batch_frames (at least
    one item per batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= batch_frames:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def embed_batch(
    system: System,
    utterances: list[np.ndarray],
    batch_frames: int = BATCH_FRAMES["cpu"],
    confidence: bool = False,
) -> list[tuple[np.ndarray, ...]]:
    """(x-vector, language scores) of each utterance's prepared frames [T, F]; with
    `confidence` (a system with a phone branch) (x-vector, scores, [c_i]).

    Every chunk of every utterance is one item; items sorted by length are padded into
    batches with a mask (the network pools a padded segment exactly as the segment alone).
    """
    items = [(u, c) for u, feats in enumerate(utterances) for c in _chunks(system, feats)]
    sums: dict[str, torch.Tensor] = {}  # output name -> per-utterance sum over chunks
    counts = torch.zeros(len(utterances), 1, device=system.device)
    for batch in _batches([len(c) for _, c in items], batch_frames):
        longest = len(items[batch[0]][1])
        x = np.zeros((len(batch), longest, system.feat_dim), dtype=np.float32)
        mask = np.zeros((len(batch), longest), dtype=bool)
        for row, i in enumerate(batch):
            chunk = items[i][1]
            x[row, : len(chunk)], mask[row, : len(chunk)] = chunk, True
        # no mask for an unpadded batch: the model then takes its unmasked (faster) path
        valid = None if mask.all() else torch.from_numpy(mask).to(system.device)
        out = system.model(torch.from_numpy(x).to(system.device), valid, phones=confidence)
        owners = torch.tensor([items[i][0] for i in batch], device=system.device)
        values = {name: getattr(out, name).float() for name in ("embedding", "classifier_input")}
        if confidence:
            values["confidence"] = phone_confidence(out.phone_logits, valid)[:, None]
        for name, value in values.items():
            total = sums.setdefault(name, value.new_zeros(len(utterances), value.shape[1]))
            total.index_add_(0, owners, value)
        counts.index_add_(0, owners, torch.ones(len(batch), 1, device=system.device))
    mean = ModelOutput(embedding=sums["embedding"] / counts, phone_logits=None,
                       classifier_input=sums["classifier_input"] / counts)  # fmt: skip
    scores = system.crit.scores(mean).float().cpu().numpy()
    vectors = getattr(mean, system.config["extract"]["layer"]).cpu().numpy()
    if confidence:
        return list(zip(vectors, scores, (sums["confidence"] / counts).cpu().numpy(), strict=True))
    return list(zip(vectors, scores, strict=True))


def embed(system: System, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x-vector, language scores) of one utterance's prepared frames [T, F]."""
    return embed_batch(system, [feats])[0]


def write_vectors(out_dir: Path, name: str, vectors: dict[str, np.ndarray]) -> None:
    """`<name>.ark` + `<name>.scp` of float32 vectors with the shared writer
    (`apm.utils.arkio.write_ark_scp`: sorted by utterance, atomic, portable ark paths)."""
    write_ark_scp(vectors, out_dir / f"{name}.ark", out_dir / f"{name}.scp", dtype=np.float32)


def _embed_cuts(
    system: System, cuts: list, vad_table: dict, env: DistEnv, batch_frames: int
) -> tuple[dict[str, dict], int]:
    """({output name: {cut id: vector}}, number of utterances whose VAD was ignored)."""
    names = output_names(system)
    outputs: dict[str, dict] = {name: {} for name in names}
    unvoiced = 0
    ecfg, cmn = system.config["extract"], system.config["train"]["cmn"]
    bar = progress(total=len(cuts), desc="x-vectors", unit="utt", disable=not env.is_main)
    for first in range(0, len(cuts), WINDOW_UTTS):
        window = cuts[first : first + WINDOW_UTTS]
        prepared = []
        for cut in window:
            feats, fell_back = prepare_frames(cut, vad_table, cmn, ecfg["min_voiced_frames"])
            if feats.shape[1] != system.feat_dim:
                raise ApmError(
                    f"cut {cut.id}: {feats.shape[1]}-dim features but the system was trained "
                    f"on {system.feat_dim}-dim ones; extract with the same feature config"
                )
            unvoiced += fell_back
            prepared.append(feats)
        embedded = embed_batch(system, prepared, batch_frames, confidence=len(names) == 3)
        for cut, values in zip(window, embedded, strict=True):
            for name, value in zip(names, values, strict=True):
                outputs[name][cut.id] = value
        bar.update(len(window))
    bar.close()
    return outputs, unvoiced


def _merge_parts(out_dir: Path, world: int, names: list[str]) -> None:
    for name in names:
        merged: dict[str, np.ndarray] = {}
        for rank in range(world):
            part = out_dir / f"{name}.part{rank}.scp"
            merged.update({k: np.asarray(v) for k, v in kaldiio.load_scp(str(part)).items()})
        write_vectors(out_dir, name, merged)
        for rank in range(world):
            for ext in ("ark", "scp"):
                (out_dir / f"{name}.part{rank}.{ext}").unlink()


def output_names(system: System) -> tuple[str, ...]:
    """What extraction writes for `system`: confidence only with a phone branch."""
    return OUTPUTS if getattr(system.model, "phone_out", None) is not None else OUTPUTS[:2]


def set_signature(model: Path, fbank_dir: Path, names: tuple[str, ...]) -> str:
    """What a set's outputs depend on (`apm.utils.done`): the model file, the set's cuts and
    VAD (with its arks), and which outputs are written. A retrained model or recomputed
    features redo the set; a copied or touched but equal model does not."""
    files = [model, fbank_dir / "cuts.jsonl.gz", fbank_dir / "vad.scp"]
    return signature(files, {"outputs": list(names)}, follow_scp=True)


def _extract_set(
    system: System, fbank_dir: Path, out_dir: Path, env: DistEnv, batch_frames: int,
    shard: tuple[int, int] | None = None,
) -> dict:  # fmt: skip
    """Embed every (not speed-perturbed) cut of one set into out_dir; returns its counts.
    `shard` (index, count): only every count-th cut from index, written as part `index`
    (a dispatcher job; the merging run joins the parts), instead of the torchrun rank's."""
    start = time.perf_counter()
    cuts = sorted(read_cuts(fbank_dir), key=lambda c: c.id)
    vad_table = read_scp(fbank_dir / "vad.scp", "VAD (vad.scp)")
    kept = [c for c in cuts if not is_speed_perturbed(c.id)]
    skipped = len(cuts) - len(kept)
    if skipped:
        log.info("skipping %d speed-perturbed cuts (training copies)", skipped)
    if not kept:
        raise ApmError(f"{fbank_dir}: no cut to embed")
    index, count = shard or (env.rank, env.world)
    outputs, unvoiced = _embed_cuts(system, kept[index::count], vad_table, env, batch_frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if count == 1 else f".part{index}"
    for name, vectors in outputs.items():
        write_vectors(out_dir, f"{name}{suffix}", vectors)
    embedded = len(outputs["xvector"])
    if shard is not None:
        counts = torch.tensor([embedded, unvoiced])
    else:
        barrier(env)
        if env.world > 1 and env.is_main:
            _merge_parts(out_dir, env.world, list(outputs))
        counts = all_reduce_sum(torch.tensor([embedded, unvoiced], device=env.device), env)
    summary = {
        "embedded": int(counts[0]),
        "speed_perturbed_skipped": skipped,
        "vad_ignored": int(counts[1]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if summary["vad_ignored"]:
        log.warning(
            "%d utterances had fewer than %d voiced frames: embedded all their frames",
            summary["vad_ignored"],
            system.config["extract"]["min_voiced_frames"],
        )
    log.info("%s: %s (%.0f utt/s)", out_dir, summary,
             summary["embedded"] / max(summary["seconds"], 1e-3))  # fmt: skip
    return summary


def _part_record(out_dir: Path, index: int) -> Path:
    return out_dir / f"{DONE}.part{index}"


def _extract_part(
    system: System, fbank_dir: Path, out_dir: Path, env: DistEnv, batch: int, job: ExtractJob,
    inputs: str,
) -> None:  # fmt: skip
    """Dispatcher job `job.job` of `job.nj`: its share of the set as part job - 1, with a
    record (a rerun keeps a finished part)."""
    index, sig = job.job - 1, f"{inputs} part {job.job - 1} of {job.nj}"
    if is_done(_part_record(out_dir, index), sig):
        log.info("%s: part %d of %d already extracted, kept", out_dir, job.job, job.nj)
        return
    _extract_set(system, fbank_dir, out_dir, env, batch, shard=(index, job.nj))
    mark_done(_part_record(out_dir, index), sig)


def _merge_jobs(out_dir: Path, nj: int, names: tuple[str, ...], inputs: str) -> None:
    """Join the `nj` dispatcher jobs' parts into the set's outputs (and drop the parts)."""
    missing = [j + 1 for j in range(nj)
               if not is_done(_part_record(out_dir, j), f"{inputs} part {j} of {nj}")]  # fmt: skip
    if missing:
        raise ApmError(
            f"{out_dir}: the parts of job(s) {' '.join(map(str, missing))} of {nj} are missing "
            "or were made from other inputs; run those jobs (--job J) before merging"
        )
    _merge_parts(out_dir, nj, list(names))
    for j in range(nj):
        _part_record(out_dir, j).unlink()
    log.info("%s: merged the parts of %d jobs", out_dir, nj)


def run_extraction(job: ExtractJob) -> dict:
    """Embed every set of `job` with one loaded model; returns the counts summed over the
    sets. A set whose record matches its inputs is kept (a killed run resumes)."""
    model = Path(job.exp_dir) / job.model_file
    state = checkpoint.load(model)
    env = init_distributed(job.device, state["config"]["extract"]["threads"])
    try:
        system = load_system(state, env.device)
        total = {"embedded": 0, "speed_perturbed_skipped": 0, "vad_ignored": 0, "seconds": 0.0}
        for fbank_dir, out_dir in job.sets():
            names = output_names(system)
            inputs = set_signature(model, fbank_dir, names)
            if is_done(out_dir / DONE, inputs):
                log.info("%s: already extracted with this model and features, kept", out_dir)
                continue
            batch = job.batch_frames or BATCH_FRAMES.get(env.device.type, BATCH_FRAMES["cpu"])
            if job.nj > 1:
                if job.job is not None:
                    _extract_part(system, fbank_dir, out_dir, env, batch, job, inputs)
                else:
                    _merge_jobs(out_dir, job.nj, names, inputs)
                    mark_done(out_dir / DONE, inputs)
                continue
            summary = _extract_set(system, fbank_dir, out_dir, env, batch)
            if env.is_main:  # after the merge: the record stands for complete outputs
                mark_done(out_dir / DONE, inputs)
            total = {k: round(total[k] + summary[k], 1) for k in total}
        return total
    finally:
        shutdown(env)
