"""Stage 5 extraction: deterministic x-vectors and scores, chunking, VAD fallback, shards."""

from __future__ import annotations

import os
import shutil
import subprocess

import kaldiio
import numpy as np
import pytest
import torch

from apm.extract.xvectors import (
    ExtractJob,
    _merge_parts,
    chunk_starts,
    embed,
    embed_batch,
    load_system,
    run_extraction,
    write_vectors,
)
from apm.features.readers import prepare_frames, read_cuts, read_scp
from apm.nnet import ModelOutput, checkpoint
from apm.train.config import resolve_config
from apm.train.job import TrainJob, run_training
from apm.train.toy import make_toy_corpus, toy_config
from apm.utils.arkio import write_ark_scp
from apm.utils.errors import ApmError


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("sys")
    toy = make_toy_corpus(root / "toy", num_langs=3, utts_per_lang=5)
    cfg = resolve_config(toy_config(epochs=1), "toy", seed=1)
    run_training(TrainJob(cfg, toy.fbank_dir, root / "exp", toy.ali_dir))
    # A set holding speed-perturbed copies too, and one utterance the VAD found silent.
    fbank = root / "set"
    fbank.mkdir()
    cuts = read_cuts(toy.fbank_dir)
    copies = [c.with_id(f"{c.id}_sp0.9") for c in cuts.subset(first=4)]
    (cuts + cuts.from_cuts(copies)).to_file(fbank / "cuts.jsonl.gz")
    vad = {k: np.asarray(v) for k, v in read_scp(toy.fbank_dir / "vad.scp", "vad").items()}
    vad["l1_u003"] = np.zeros_like(vad["l1_u003"])
    kaldiio.save_ark(str(fbank / "vad.ark"), vad, scp=str(fbank / "vad.scp"))
    return root / "exp", fbank, sorted(cuts.ids)


def _read(path):
    return {k: np.asarray(v) for k, v in kaldiio.load_scp(str(path)).items()}


def test_extraction_is_deterministic_and_skips_speed_perturbed(
    tmp_path, system, repo_root, shell_env
):
    exp, fbank, ids = system
    summary = run_extraction(ExtractJob(exp, fbank, tmp_path / "a", device="cpu"))
    assert summary["embedded"] == len(ids) and summary["speed_perturbed_skipped"] == 4
    assert summary["vad_ignored"] == 1
    cmd = [
        str(repo_root / "steps/extract_xvectors.sh"),
        "--ngpu",
        "0",
        str(exp),
        str(fbank),
        str(tmp_path / "b"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=shell_env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for name, dim in (("xvector", 32), ("logits", 3)):
        a, b = _read(tmp_path / "a" / f"{name}.scp"), _read(tmp_path / "b" / f"{name}.scp")
        assert list(a) == ids and list(b) == ids
        for utt in ids:
            assert a[utt].dtype == np.float32 and a[utt].shape == (dim,)
            np.testing.assert_array_equal(a[utt], b[utt])
    line = (tmp_path / "b" / "xvector.scp").read_text().splitlines()[0]
    assert line.split()[1].startswith(f"{tmp_path / 'b' / 'xvector.ark'}:")


def test_scores_are_the_classifier_outputs_of_the_chunk_average(system):
    exp, fbank, _ = system
    sys_ = load_system(checkpoint.load(exp / "final.pt"), torch.device("cpu"))
    cut = max(read_cuts(fbank), key=lambda c: c.num_frames)
    feats, _ = prepare_frames(cut, read_scp(fbank / "vad.scp", "vad"), "utterance", 20)
    starts, length = chunk_starts(len(feats), sys_.config["extract"]["max_chunk_frames"])
    assert len(starts) > 1  # the longest toy utterance is chunked
    xvector, scores = embed(sys_, feats)
    with torch.no_grad():
        outs = [sys_.model(torch.from_numpy(feats[s : s + length][None]), None) for s in starts]
        mean_x = torch.cat([o.embedding for o in outs]).mean(0)
        mean_c = torch.cat([o.classifier_input for o in outs]).mean(0, keepdim=True)
        expected = sys_.crit.scores(ModelOutput(mean_x[None], None, mean_c))[0]
    np.testing.assert_allclose(xvector, mean_x.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames,max_chunk", [(90, 150), (150, 150), (151, 150), (1234, 300)])
def test_chunks_are_equal_and_cover_the_utterance(frames, max_chunk):
    starts, length = chunk_starts(frames, max_chunk)
    assert length <= max_chunk and starts[0] == 0 and starts[-1] + length == frames
    assert len(starts) == -(-frames // max_chunk)
    assert np.all(np.diff(starts) <= length)  # no gap between neighbours


def test_shards_merge_into_the_single_process_output(tmp_path):
    rng = np.random.default_rng(0)
    vectors = {f"u{i:02d}": rng.normal(size=4).astype(np.float32) for i in range(7)}
    ids = sorted(vectors)
    for name in ("xvector", "logits"):
        for rank in range(2):
            write_vectors(tmp_path, f"{name}.part{rank}", {u: vectors[u] for u in ids[rank::2]})
    _merge_parts(tmp_path, 2, ["xvector", "logits"])
    merged = _read(tmp_path / "xvector.scp")
    assert list(merged) == ids and all(np.array_equal(merged[u], vectors[u]) for u in ids)
    assert not list(tmp_path.glob("*.part*"))


def test_confidence_is_the_training_time_c_i(system):
    """confidence.scp holds c_i of each utterance (mean max phone posterior over its valid
    frames): the batched, padded value equals the one of the utterance alone."""
    exp, fbank, _ = system
    system_ = load_system(checkpoint.load(exp / "final.pt"), torch.device("cpu"))
    rng = np.random.default_rng(1)
    utts = [rng.normal(size=(n, 20)).astype(np.float32) for n in (90, 130, 60)]
    batched = embed_batch(system_, utts, confidence=True)
    for feats, (_, _, c) in zip(utts, batched, strict=True):
        with torch.no_grad():
            logits = system_.model(torch.from_numpy(feats[None]), None).phone_logits
        alone = torch.softmax(logits, -1).amax(-1).mean()
        assert c.shape == (1,) and c[0] == pytest.approx(float(alone), abs=1e-5)


def test_missing_final_model_is_a_clear_error(tmp_path, system):
    exp, fbank, _ = system
    shutil.copytree(exp, tmp_path / "exp", ignore=shutil.ignore_patterns("final.pt"))
    with pytest.raises(ApmError, match="final.pt: checkpoint not found"):
        run_extraction(ExtractJob(tmp_path / "exp", fbank, tmp_path / "out"))


def test_config_names_the_embedding_layer(system):
    exp, fbank, _ = system
    state = checkpoint.load(exp / "final.pt")
    feats = np.random.default_rng(0).normal(size=(120, 20)).astype(np.float32)
    vectors = {}
    for layer in ("embedding", "classifier_input"):
        state["config"]["extract"]["layer"] = layer
        vectors[layer], _ = embed(load_system(state, torch.device("cpu")), feats)
    model = load_system(state, torch.device("cpu")).model
    with torch.no_grad():
        out = model(torch.from_numpy(feats[None]), None)
    np.testing.assert_allclose(vectors["classifier_input"], out.classifier_input[0], atol=1e-5)
    np.testing.assert_allclose(vectors["embedding"], out.embedding[0], atol=1e-5)


def test_batched_extraction_equals_one_utterance_at_a_time(system):
    exp, fbank, _ = system
    sys_ = load_system(checkpoint.load(exp / "final.pt"), torch.device("cpu"))
    vad = read_scp(fbank / "vad.scp", "vad")
    cuts = sorted(read_cuts(fbank), key=lambda c: c.num_frames)[::3]
    feats = [prepare_frames(c, vad, "utterance", 20)[0] for c in cuts]
    assert len({len(f) for f in feats}) > 2  # lengths differ: batches are padded
    alone = [embed(sys_, f) for f in feats]
    for budget in (1, 700, 10**6):  # one chunk per batch, a few, everything at once
        batched = embed_batch(sys_, feats, batch_frames=budget)
        for (x1, s1), (x2, s2) in zip(alone, batched, strict=True):
            np.testing.assert_allclose(x2, x1, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(s2, s1, rtol=1e-4, atol=1e-5)


def test_one_process_embeds_several_sets_and_keeps_finished_ones(tmp_path, system):
    exp, fbank, ids = system
    job = ExtractJob(exp, fbank, tmp_path / "a", device="cpu", more_sets=((fbank, tmp_path / "b"),))
    assert run_extraction(job)["embedded"] == 2 * len(ids)
    assert _read(tmp_path / "a/xvector.scp").keys() == _read(tmp_path / "b/xvector.scp").keys()
    assert run_extraction(job)["embedded"] == 0  # both newer than the model: kept


def test_rerun_follows_the_model_and_features_content_not_times(tmp_path, system):
    exp, fbank, ids = system
    job = ExtractJob(exp, fbank, tmp_path / "a", device="cpu")
    assert run_extraction(job)["embedded"] == len(ids)
    model = exp / job.model_file
    os.utime(model)  # touched (e.g. copied) but the same model: kept
    assert run_extraction(job)["embedded"] == 0
    moved = tmp_path / "fbank"
    shutil.copytree(fbank, moved)
    vad = read_scp(moved / "vad.scp", "vad")
    first = sorted(vad)[0]
    changed = {k: np.asarray(v) for k, v in vad.items()}
    changed[first] = changed[first].copy()
    changed[first][: len(changed[first]) // 2] = 0  # other VAD: the set is redone
    write_ark_scp(changed, moved / "vad.ark")
    other = ExtractJob(exp, moved, tmp_path / "a", device="cpu")
    assert run_extraction(other)["embedded"] == len(ids)
    assert run_extraction(other)["embedded"] == 0


def test_dispatcher_jobs_merge_to_the_one_process_bytes(tmp_path, system):
    """--nj 2 --job J (steps/extract_xvectors.sh --nj 2 through $decode_cmd), then the merge,
    writes the bytes of one process; a merge before every job finished names the missing one,
    and a finished part is kept on a rerun."""
    exp, fbank, _ = system
    run_extraction(ExtractJob(exp, fbank, tmp_path / "one", device="cpu"))
    jobs = tmp_path / "jobs"
    run_extraction(ExtractJob(exp, fbank, jobs, device="cpu", nj=2, job=2))
    with pytest.raises(ApmError, match="job\\(s\\) 1 of 2 are missing"):
        run_extraction(ExtractJob(exp, fbank, jobs, device="cpu", nj=2))
    run_extraction(ExtractJob(exp, fbank, jobs, device="cpu", nj=2, job=1))
    run_extraction(ExtractJob(exp, fbank, jobs, device="cpu", nj=2, job=1))  # kept: no-op
    run_extraction(ExtractJob(exp, fbank, jobs, device="cpu", nj=2))
    for name in ("xvector", "logits"):
        assert (jobs / f"{name}.ark").read_bytes() == (
            tmp_path / "one" / f"{name}.ark"
        ).read_bytes()
    assert not list(jobs.glob("*part*")) and not list(jobs.glob(".done.part*"))
