"""apm.utils.arkio: the one ark/scp writer (atomic, sorted, portable paths, dtypes kept)."""

from __future__ import annotations

import kaldiio
import numpy as np
import pytest

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
