"""Stage 2's lilcom feature store: decoded features within lilcom's rounding of the float32
fbank, random access to frame ranges, and read by training and extraction as they are."""

import os
from pathlib import Path

import numpy as np
import pytest

from apm.data.import_dirs import import_data_dirs
from apm.data.manifests import make_manifests
from apm.data.toy import make_toy_corpus
from apm.features.fbank import STORE_TICK_POWER as TICK_POWER
from apm.features.fbank import FeatureConfig, fbank_and_vad, make_extractor
from apm.features.pipeline import make_fbank
from apm.features.readers import (
    load_cut_features,
    prepare_frames,
    read_cuts,
    read_scp,
    select_and_normalize,
)
from apm.train.data import load_corpus
from apm.train.job import input_signature
from apm.utils.errors import ApmError

# lilcom stores multiples of 2^TICK_POWER: a decoded value is at most half a tick away.
HALF_TICK = 2.0 ** (TICK_POWER - 1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_toy_corpus(root / "olr", {"train": 1}, seconds=(4.0, 6.0))
    import_data_dirs(root / "olr", root / "data", ["train"])
    make_manifests(root / "data", root / "manifests", ["train"])
    make_fbank(root / "manifests", root / "fbank", ["train"], FeatureConfig())
    return root / "fbank/train"


def test_decoded_features_are_within_half_a_tick_of_the_float32_fbank(store):
    cfg = FeatureConfig()
    extractor = make_extractor(cfg)
    errors = []
    for cut in read_cuts(store).to_eager():
        exact, _ = fbank_and_vad(cut.load_audio()[0], cut.sampling_rate, extractor, cfg.vad, cut.id)
        stored = cut.load_features()
        assert stored.dtype == np.float32 and stored.shape == exact.shape
        errors.append(np.abs(stored - exact).ravel())
    errors = np.concatenate(errors)
    # float32 rounding of the tick multiples adds a few ulps of values up to ~30
    assert errors.max() <= HALF_TICK + 1e-5, errors.max()
    assert errors.max() > 0, "lilcom is lossy: an exact copy means the store is not lilcom"
    # rounding error spreads evenly over (-half tick, half tick): mean |error| ~ half of it
    assert 0.3 * HALF_TICK < errors.mean() < 0.7 * HALF_TICK, errors.mean()


def test_random_access_reads_a_frame_range_as_the_whole_matrix_has_it(store):
    cut = max(read_cuts(store).to_eager(), key=lambda c: c.duration)
    whole = cut.load_features()
    assert len(whole) > 500, "longer than lhotse's lilcom chunk, so the range spans chunks"
    part = cut.truncate(offset=2.5, duration=1.5).load_features()
    np.testing.assert_array_equal(part, whole[250:400])


@pytest.mark.parametrize("cmn", ["utterance", "chunk"])
def test_streamed_chunks_decode_the_lilcom_chunks_they_span(store, cmn):
    """A streamed chunk of an utterance longer than lhotse's lilcom chunk (500 frames), read
    from the chunks it spans (the first, both, the second), is that slice of the utterance."""
    memory = load_corpus(store, None, cmn=cmn, min_utt_frames=1)
    streamed = load_corpus(store, None, cmn=cmn, min_utt_frames=1, cache=False)
    voiced = [streamed.cuts.voiced(i, streamed.cuts.matrix(i)[1]) for i in range(len(memory.ids))]
    # utterances voiced in their second lilcom chunk; `first`: voiced frames in the first
    spans = [(i, int(v[:500].sum())) for i, v in enumerate(voiced) if v[500:].sum() >= 20]
    assert spans, "no utterance is voiced in two lilcom chunks"
    for i, first in spans:
        for start, n in ((0, 100), (first - 20, 40), (first, int(streamed.lengths[i]) - first)):
            got, _ = streamed.chunk(i, start, n)
            np.testing.assert_array_equal(got, memory.chunk(i, start, n)[0])


def test_a_streamed_chunk_of_a_truncated_archive_names_its_cut(store):
    streamed = load_corpus(store, None, cmn="utterance", min_utt_frames=1, cache=False)
    last = max(range(len(streamed.ids)), key=lambda i: streamed.cuts.matrix(i)[2][-1])
    archive = streamed.cuts.matrix(last)[0]
    original = Path(archive).read_bytes()
    try:
        Path(archive).write_bytes(original[: len(original) - 100])
        with pytest.raises(ApmError, match=f"cut {streamed.ids[last]}: .* ends inside"):
            streamed.chunk(last, 0, 10)
    finally:
        Path(archive).write_bytes(original)
    assert len(streamed.chunk(last, 0, 10)[0]) == 10


def test_training_and_extraction_read_the_store(store):
    cuts = read_cuts(store).to_eager()
    vad = read_scp(store / "vad.scp", "vad")
    corpus = load_corpus(store, None, cmn="utterance", min_utt_frames=1)
    assert sorted(corpus.ids) == sorted(cuts.ids)
    for i, utt in enumerate(corpus.ids):
        feats = load_cut_features(cuts[utt])
        keep = np.asarray(vad[utt]) > 0.5
        expected = select_and_normalize(feats, keep, "utterance")
        np.testing.assert_array_equal(
            corpus.feats[corpus.offsets[i] : corpus.offsets[i + 1]], expected
        )
        frames, fell_back = prepare_frames(cuts[utt], vad, "utterance", 1)
        assert not fell_back
        np.testing.assert_array_equal(frames, expected)


def test_training_inputs_include_the_store(store):
    before = input_signature(store, None)
    archive = store / "storage/feats.1.lca"
    original = archive.read_bytes()
    try:
        data = bytearray(original)
        data[-1] ^= 1  # other feature values of the same size: the cuts file does not change
        archive.write_bytes(bytes(data))
        assert input_signature(store, None) != before
    finally:
        archive.write_bytes(original)
    assert input_signature(store, None) == before


def test_as_stored_is_what_the_store_gives_back(tmp_path):
    """Features computed later from audio (identify, augmentation) go through the store's
    codec, so they equal the stored ones exactly (lilcom rounds ties up and codes short
    chunks differently: plain rounding would not do)."""
    from lhotse.features.io import LilcomChunkyReader, LilcomChunkyWriter

    from apm.features.fbank import as_stored

    rng = np.random.default_rng(0)
    matrices = {f"u{n}": (rng.normal(size=(n, 40)) * 7).astype(np.float32) for n in (250, 7, 130)}
    with LilcomChunkyWriter(tmp_path / "a.lca", tick_power=TICK_POWER) as writer:
        keys = {name: writer.write(name, x.copy()) for name, x in matrices.items()}
    reader = LilcomChunkyReader(tmp_path / "a.lca")
    for name, x in matrices.items():
        np.testing.assert_array_equal(reader.read(keys[name]), as_stored(x))


def test_cached_training_signature_is_the_same_and_sees_a_changed_archive(store, tmp_path):
    cache = tmp_path / "exp/inputs.sha256.cache.json"
    before = input_signature(store, None)
    assert input_signature(store, None, cache) == before and cache.is_file()
    assert input_signature(store, None, cache) == before
    archive = store / "storage/feats.1.lca"
    original, st = archive.read_bytes(), archive.stat()
    try:
        data = bytearray(original)
        data[-1] ^= 1  # same size; the new modification time tells the cache
        archive.write_bytes(bytes(data))
        os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**12))
        assert input_signature(store, None, cache) == input_signature(store, None) != before
    finally:
        archive.write_bytes(original)
    assert input_signature(store, None, cache) == before
