"""Stage 3: frame-level phone labels for every cut of a feature directory.

Sources: `pocketsphinx` (all-phone decoding, the virtual labels), `oracle` (the corpus's eSpeak
timings, `data/oracle_ali/<set>`), `kaldi:DIR` (Kaldi `ali-to-phones --per-frame=true` output
plus its phones.txt). Whatever the source, the output is `ali.{ark,scp}` keyed by cut id with
exactly the cut's feature frame count, `phones.txt` with SIL = 0, and `report.{json,md}`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from apm.align.arkio import read_labels, write_labels
from apm.align.config import AlignConfig
from apm.align.decode import cut_frames, decode_cuts
from apm.align.inventory import language_information, shared_lookup
from apm.align.kaldi import UnsnippedLabels
from apm.align.labels import warp_labels
from apm.align.phones import PhoneTable, map_labels, normalise_table
from apm.align.report import build_report, write_report
from apm.features.readers import cut_language, perturbed_source, read_cuts, read_phones
from apm.utils.errors import ApmError
from apm.utils.frames import fit_frame_count

log = logging.getLogger(__name__)


class LabelSource:
    """Frame labels keyed by utterance (or cut) id with their phone table.

    `lookup` maps the source's ids to ours (None when they already are ours).
    """

    def __init__(
        self,
        labels: Mapping[str, np.ndarray],
        table: PhoneTable,
        name: str,
        lookup: np.ndarray | None = None,
    ) -> None:
        self.labels, self.table, self.name, self.lookup = labels, table, name, lookup

    def get(self, utt: str) -> np.ndarray:
        try:
            vec = np.asarray(self.labels[utt])
        except Exception as e:  # a lazy kaldiio entry whose ark is missing or damaged
            raise ApmError(f"{self.name}: cannot read the labels of {utt}: {e}") from e
        if vec.ndim != 1:
            raise ApmError(f"{self.name}: labels of {utt} are not a vector (shape {vec.shape})")
        return map_labels(vec, self.lookup, utt, self.name) if self.lookup is not None else vec

    def for_cut(self, cut) -> np.ndarray | None:
        """Labels on the cut's frame grid: its own entry, else its original's time-warped."""
        target = cut_frames(cut)
        if cut.id in self.labels:
            return fit_frame_count(self.get(cut.id), target, cut.id)
        source = perturbed_source(cut.id)
        if source and source[0] in self.labels:
            return warp_labels(self.get(source[0]), source[1], target, cut.id)
        return None


def read_label_dir(
    directory: str | os.PathLike,
    silence: Sequence[str],
    merge_positions: bool,
    name: str,
    snip_edges: bool = False,
) -> LabelSource:
    """An `ali.scp` (or `ali.ark`) + `phones.txt` directory as a LabelSource; `snip_edges`:
    the labels are on Kaldi's --snip-edges=true grid and are re-gridded (apm.align.kaldi)."""
    directory = Path(directory)
    ali = directory / "ali.scp"
    if not ali.is_file():
        ali = directory / "ali.ark"
    if not ali.is_file():
        raise ApmError(f"{directory}: neither ali.scp nor ali.ark found ({name} alignment)")
    phones = directory / "phones.txt"
    table, lookup = normalise_table(read_phones(phones), silence, merge_positions, str(phones))
    labels = read_labels(ali)
    if snip_edges:
        labels = UnsnippedLabels(labels)
    return LabelSource(labels, table, f"{name} alignment {ali}", lookup)


def oracle_source(
    oracle_dir: str | os.PathLike, cfg: AlignConfig, inventory: str | None = None
) -> LabelSource:
    """eSpeak's oracle labels in `inventory` (default cfg.oracle_inventory): raw mnemonics or
    the shared broad-class inventory."""
    raw = read_label_dir(oracle_dir, cfg.oracle_silence, False, "oracle")
    if (inventory or cfg.oracle_inventory) == "raw":
        return raw
    symbols, to_class = shared_lookup(raw.table.symbols)
    lookup = np.where(raw.lookup >= 0, to_class[np.clip(raw.lookup, 0, None)], -1)
    return LabelSource(raw.labels, PhoneTable(symbols), f"{raw.name} (shared inventory)",
                       lookup.astype(np.int32))  # fmt: skip


def decoded_source(
    cuts: Sequence, cfg: AlignConfig, dst: Path, nj: int
) -> tuple[LabelSource, dict]:
    """Decode with PocketSphinx; copies whose original is in the set are warped, if so set."""
    from apm.align.sphinx import SphinxAligner

    todo = _to_decode(cuts, cfg)
    log.info("decoding %d of %d cuts with PocketSphinx (%d jobs)", len(todo), len(cuts), nj)
    labels, summaries = decode_cuts(todo, cfg, dst / "jobs", nj)
    table = SphinxAligner.phone_table(cfg.pocketsphinx)
    cpu = sum(s.cpu_seconds for s in summaries)
    audio = sum(s.audio_seconds for s in summaries)
    stats = {
        "decoded": sum(s.decoded for s in summaries),
        "too_short": sorted(i for s in summaries for i in s.too_short),
        "silence_only": sorted(i for s in summaries for i in s.silence_only),
        "failed": {k: v for s in summaries for k, v in s.failed.items()},
        "audio_seconds": round(audio, 2),
        "cpu_seconds": round(cpu, 2),
        "xrt_per_core": round(audio / cpu, 2) if cpu > 0 else None,
        "perturbed": cfg.perturbed,
    }
    return LabelSource(labels, table, "pocketsphinx"), stats


def _to_decode(cuts: Sequence, cfg: AlignConfig) -> list:
    """The cuts PocketSphinx decodes: all, or with `perturbed: warp` those whose original
    is not in the set (the copies get its labels time-warped)."""
    if cfg.perturbed != "warp":
        return list(cuts)
    ids = {c.id for c in cuts}
    return [c for c in cuts if not _original_in(c.id, ids)]


def decode_jobs_left(src: str | os.PathLike, dst: str | os.PathLike, cfg: AlignConfig,
                     nj: int) -> int:  # fmt: skip
    """How many of the `nj` PocketSphinx decoding jobs (decode_job) are not finished."""
    from apm.align.decode import Job, finished, split

    cuts = sorted(read_cuts(src), key=lambda c: c.id)
    parts = split(_to_decode(cuts, cfg), nj) if cuts else []
    return sum(finished(Job(i + 1, part, cfg, Path(dst) / "jobs")) is None
               for i, part in enumerate(parts))  # fmt: skip


def decode_job(src: str | os.PathLike, dst: str | os.PathLike, cfg: AlignConfig, nj: int,
               job: int) -> None:  # fmt: skip
    """Dispatcher job `job` of `nj` (utils/dispatch.sh): decode the job's share of the cuts
    (decode_cuts' split) into `dst/jobs`, unless an earlier run finished it; the run without
    a job number then merges them and writes the outputs."""
    from apm.align.decode import Job, finished, run_job, split

    cuts = sorted(read_cuts(src), key=lambda c: c.id)
    parts = split(_to_decode(cuts, cfg), nj)
    if job > len(parts) or not parts[job - 1]:
        log.info("job %d of %d: no cuts to decode (%d parts)", job, nj, len(parts))
        return
    todo = Job(job, parts[job - 1], cfg, Path(dst) / "jobs")
    if finished(todo) is not None:
        log.info("job %d of %d: already decoded, kept", job, nj)
        return
    log.info("job %d of %d: decoding %d cuts with PocketSphinx", job, nj, len(todo.cuts))
    summary = run_job(todo)
    if summary.failed:  # recorded, as in-process runs: the merging run reports them
        log.warning("job %d: %d cuts failed to decode", job, len(summary.failed))


def _original_in(cut_id: str, ids: set[str]) -> bool:
    source = perturbed_source(cut_id)
    return source is not None and source[0] in ids


def collect(cuts: Sequence, source: LabelSource, failed: dict[str, str]) -> dict[str, np.ndarray]:
    """Labels of every cut on its frame grid; cuts without any are added to `failed`."""
    labels: dict[str, np.ndarray] = {}
    for cut in cuts:
        vec = None if cut.id in failed else source.for_cut(cut)
        if vec is not None:
            labels[cut.id] = vec
            continue
        original = perturbed_source(cut.id)
        if original and original[0] in failed:
            failed[cut.id] = f"its original {original[0]} has no labels"
        else:
            failed.setdefault(cut.id, f"no labels in {source.name}")
    return labels


def align_phones(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    ali_from: str,
    cfg: AlignConfig,
    nj: int = 1,
    oracle_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
) -> dict:
    """Write `dst/ali.{ark,scp}`, `dst/phones.txt` and `dst/report.{json,md}`; return the report."""
    dst = Path(dst)
    cuts = sorted(read_cuts(src), key=lambda c: c.id)
    if not cuts:
        raise ApmError(f"{src}: no cuts; rerun stage 2 (features) for this set")
    oracle = None  # the report's reference: eSpeak's raw mnemonics
    if oracle_dir and Path(oracle_dir).is_dir():
        oracle = oracle_source(oracle_dir, cfg, "raw")
    stats: dict = {}
    if ali_from == "pocketsphinx":
        source, stats = decoded_source(cuts, cfg, dst, nj)
    elif ali_from == "oracle":
        if oracle is None:
            raise ApmError(f"--ali-from oracle needs the oracle directory; {oracle_dir} not found")
        source, oracle = oracle_source(oracle_dir, cfg), None  # no agreement with itself
    elif ali_from.startswith("kaldi:") and ali_from[6:]:
        source = read_label_dir(
            ali_from[6:], cfg.kaldi_silence, cfg.kaldi_merge_positions, "kaldi",
            snip_edges=cfg.kaldi_snip_edges,
        )  # fmt: skip
    else:
        raise ApmError(f"--ali-from {ali_from}: expected pocketsphinx, oracle or kaldi:DIR")

    failed = dict(stats.get("failed", {}))
    labels = collect(cuts, source, failed)
    _check_failed(failed, skip_bad, source.name)
    if not labels:  # even with --skip-bad: nothing to train on is not a result
        raise ApmError(
            f"{source.name}: none of the {len(cuts)} cuts of {src} got labels (e.g. "
            f"{next(iter(sorted(failed.items())), ('', ''))[1]}); is it the alignment of "
            "this set (a stale oracle or Kaldi directory)? Nothing was written"
        )

    dst.mkdir(parents=True, exist_ok=True)
    write_labels(((k, labels[k]) for k in sorted(labels)), dst / "ali.ark", dst / "ali.scp")
    source.table.write(dst / "phones.txt")
    report = _report(ali_from, cuts, labels, source.table, cfg, stats, failed, oracle)
    write_report(dst, report)
    log.info("wrote %d alignments to %s (%d failed)", len(labels), dst / "ali.scp", len(failed))
    return report


def _report(
    ali_from: str,
    cuts: Sequence,
    labels: dict[str, np.ndarray],
    table: PhoneTable,
    cfg: AlignConfig,
    stats: dict,
    failed: dict[str, str],
    oracle: LabelSource | None,
) -> dict:
    """report.json's content: counts, phone set, per-language statistics, what failed."""
    oracle_labels = None
    language = {c.id: cut_language(c, "unknown") for c in cuts}
    info = {ali_from: language_information([labels[k] for k in labels],
                                           [language[k] for k in labels])}  # fmt: skip
    if oracle is not None:
        oracle_labels = {
            c.id: v for c in cuts if c.id in labels and (v := oracle.for_cut(c)) is not None
        }
        ids = sorted(oracle_labels)
        _, to_class = shared_lookup(oracle.table.symbols)
        for name, mapped in (("oracle raw", lambda x: x), ("oracle shared", lambda x: to_class[x])):
            info[name] = language_information([mapped(oracle_labels[i]) for i in ids],
                                              [language[i] for i in ids])  # fmt: skip
        stats = {**stats, "oracle_inventory": cfg.oracle_inventory}
    return {
        "summary": {
            "source": ali_from,
            "utterances": len(labels),
            "too_short": len(stats.get("too_short", [])),
            "silence_only": len(stats.get("silence_only", [])),
            "failed": len(failed),
            **{k: v for k, v in stats.items() if k not in ("too_short", "silence_only", "failed")},
            "language_information": info,
        },
        "phones": list(table.symbols),
        "languages": build_report(
            labels,
            language,
            table,
            cfg.report_top_phones,
            oracle_labels,
        ),
        "failed": failed,
        "warnings": {k: stats.get(k, []) for k in ("too_short", "silence_only")},
    }


def _check_failed(failed: dict[str, str], skip_bad: bool, source: str) -> None:
    if not failed:
        return
    listing = "; ".join(f"{k}: {v}" for k, v in sorted(failed.items())[:5])
    more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
    if not skip_bad:
        raise ApmError(
            f"{len(failed)} utterance(s) without labels from {source}: {listing}{more}; fix the "
            "input, or rerun with --skip-bad true to leave them out (finished jobs are kept)"
        )
    log.warning("skipping %d utterance(s) without labels: %s%s", len(failed), listing, more)
