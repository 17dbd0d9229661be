"""apm.utils.arkio: the one ark/scp writer (atomic, sorted, portable paths, dtypes kept)."""

from __future__ import annotations

import kaldiio
import numpy as np
import pytest

from apm.features.readers import read_alignment_scp
from apm.utils import ApmError
from apm.utils.arkio import write_ark_scp


def test_mapping_is_sorted_and_dtypes_are_kept(tmp_path):
    items = {
        "b": np.array([0, 1, 2], np.int32),
        "a": np.arange(500, dtype=np.int32) % 40,
        "c": np.ones((3, 4), np.float32),
        "d": np.array([0.5, 1.5], np.float64),
    }
    assert write_ark_scp(items, tmp_path / "x.ark") == 4
    scp = (tmp_path / "x.scp").read_text().splitlines()
    assert [line.split()[0] for line in scp] == ["a", "b", "c", "d"]
    back = kaldiio.load_scp(str(tmp_path / "x.scp"))
    for k, v in items.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    assert not list(tmp_path.glob(".*.tmp"))


def test_pairs_stream_in_order_and_dtype_is_converted(tmp_path):
    pairs = (k for k in [("z", np.arange(3)), ("y", np.arange(2))])
    assert write_ark_scp(pairs, tmp_path / "x.ark", tmp_path / "i.scp", dtype=np.float32) == 2
    back = kaldiio.load_scp(str(tmp_path / "i.scp"))
    assert list(back) == ["z", "y"] and back["z"].dtype == np.float32


def test_scp_names_the_ark_portably(tmp_path, monkeypatch):
    """Relative to the current (recipe) directory when under it, else absolute, or as given."""
    items = [("a", np.arange(3, dtype=np.int32))]
    root = tmp_path.resolve()
    (root / "recipe/ali").mkdir(parents=True)
    monkeypatch.chdir(root / "recipe")
    write_ark_scp(items, root / "recipe/ali/x.ark", "ali/x.scp")
    assert (root / "recipe/ali/x.scp").read_text() == "a ali/x.ark:2\n"
    assert np.array_equal(kaldiio.load_scp("ali/x.scp")["a"], [0, 1, 2])
    write_ark_scp(items, root / "y.ark", root / "y.scp")
    assert (root / "y.scp").read_text() == f"a {root / 'y.ark'}:2\n"
    write_ark_scp(items, root / "stage/z.ark", ark_name="final/z.ark")
    assert (root / "stage/z.scp").read_text() == "a final/z.ark:2\n"


def test_failed_write_keeps_the_previous_pair(tmp_path):
    write_ark_scp({"a": np.zeros(2)}, tmp_path / "x.ark")
    before = (tmp_path / "x.scp").read_text(), (tmp_path / "x.ark").read_bytes()
    with pytest.raises(ApmError, match="key 'bad key'"):
        write_ark_scp([("b", np.ones(2)), ("bad key", np.ones(2))], tmp_path / "x.ark")
    assert ((tmp_path / "x.scp").read_text(), (tmp_path / "x.ark").read_bytes()) == before
    assert not list(tmp_path.glob(".*.tmp"))


def _alignments() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = {f"utt{i}": rng.integers(-(2**31), 2**31, size=n) for i, n in enumerate([7, 300, 1])}
    vectors["empty"] = np.zeros(0, dtype=np.int64)
    vectors["small"] = np.array([0, 1, 2, 39])
    return vectors


def test_int32_vector_table_equals_kaldiio(tmp_path):
    """Our writer's ali.scp, kaldiio's own binary writer and a text ark: same arrays and
    dtype as kaldiio reads them."""
    vectors = _alignments()
    write_ark_scp(vectors, tmp_path / "ali.ark", tmp_path / "ali.scp", dtype=np.int32)
    kaldiio.save_ark(
        str(tmp_path / "k.ark"),
        {k: v.astype(np.int32) for k, v in vectors.items()},
        scp=str(tmp_path / "k.scp"),
    )
    text = {k: v.astype(np.int32) for k, v in vectors.items() if len(v)}
    kaldiio.save_ark(str(tmp_path / "t.ark"), text, scp=str(tmp_path / "t.scp"), text=True)
    for name in ("ali.scp", "k.scp", "t.scp"):
        ours = read_alignment_scp(tmp_path / name)
        theirs = kaldiio.load_scp(str(tmp_path / name))
        assert list(ours) == list(theirs) and len(ours) == len(theirs)
        for key in theirs:
            a, b = ours[key], theirs[key]
            assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all(), (name, key)
        assert "nope" not in ours


def test_int32_vector_table_names_a_truncated_or_corrupt_entry(tmp_path):
    write_ark_scp({"a": np.arange(5), "b": np.arange(50)}, tmp_path / "ali.ark", dtype=np.int32)
    table = read_alignment_scp(tmp_path / "ali.scp")
    ark = tmp_path / "ali.ark"
    data = bytearray(ark.read_bytes())
    ark.write_bytes(bytes(data[:-7]))  # the last entry, b, loses its tail
    assert (table["a"] == np.arange(5)).all()
    with pytest.raises(ApmError, match=r"ali\.ark: entry 'b' at byte \d+ is truncated"):
        table["b"]
    start = data.index(b"\0B\x04", data.index(b"a ") + 2)
    data[start + 7 + 5 * 2] = 8  # element 2 of "a": size byte 8
    ark.write_bytes(bytes(data))
    with pytest.raises(ApmError, match=r"entry 'a' at byte \d+ is corrupt: element 2"):
        table["a"]
    with pytest.raises(ApmError, match="alignment .ali.scp. not found"):
        read_alignment_scp(tmp_path / "missing" / "ali.scp")
