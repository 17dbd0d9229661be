"""apm.utils.done: one record of the inputs that made a step's outputs."""

from __future__ import annotations

import os

import kaldiio
import numpy as np

from apm.utils.done import is_done, mark_done, recorded, signature


def test_signature_follows_content_settings_and_scp_arks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kaldiio.save_ark("v.ark", {"a": np.zeros(3, np.float32)}, scp="v.scp")
    (tmp_path / "cfg.txt").write_text("x")
    base = signature(["cfg.txt", "v.scp"], {"k": 1}, follow_scp=True)
    assert base == signature(["cfg.txt", "v.scp"], {"k": 1}, follow_scp=True)
    assert base != signature(["cfg.txt", "v.scp"], {"k": 2}, follow_scp=True)
    os.utime("cfg.txt", (1, 1))  # touched, same content: same signature
    assert signature(["cfg.txt", "v.scp"], {"k": 1}, follow_scp=True) == base
    shallow = signature(["cfg.txt", "v.scp"], {"k": 1})
    kaldiio.save_ark("v.ark", {"a": np.ones(3, np.float32)})  # same scp, other ark content
    assert signature(["cfg.txt", "v.scp"], {"k": 1}) == shallow
    assert signature(["cfg.txt", "v.scp"], {"k": 1}, follow_scp=True) != base
    assert signature(["absent", "cfg.txt"]) == signature(["cfg.txt"])


def test_record_round_trip_is_atomic(tmp_path):
    record = tmp_path / "out" / ".done"
    assert recorded(record) is None and not is_done(record, "abc")
    mark_done(record, "abc")
    assert is_done(record, "abc") and not is_done(record, "abd")
    assert record.read_text() == "abc\n" and not list(record.parent.glob(".*.tmp"))
