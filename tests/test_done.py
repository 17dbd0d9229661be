"""apm.utils.done: one record of the inputs that made a step's outputs."""

from __future__ import annotations

import os

import kaldiio
import numpy as np

import apm.utils.done
from apm.utils.done import cached_signature, is_done, mark_done, recorded, signature


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


def test_cached_signature_equals_signature_and_is_reused_until_a_file_changes(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    kaldiio.save_ark("v.ark", {"a": np.zeros(3, np.float32)}, scp="v.scp")
    (tmp_path / "feats.bin").write_bytes(b"abcdef")
    files, cache = ["feats.bin", "v.scp", "absent"], tmp_path / "exp/sig.json"
    reads = []
    real_digest = apm.utils.done._digest
    monkeypatch.setattr(apm.utils.done, "_digest", lambda *a: reads.append(a) or real_digest(*a))

    def cached():
        """(cached signature, whether the files were read again)"""
        before = len(reads)
        sig = cached_signature(files, {"k": 1}, follow_scp=True, cache=cache)
        return sig, len(reads) > before

    def fresh():
        return signature(files, {"k": 1}, follow_scp=True)

    first = fresh()
    assert cached() == (first, True) and cache.is_file()
    assert cached() == (first, False)  # nothing changed: no file read again
    os.utime("feats.bin", ns=(1, 1))  # touched only: read again, same signature
    assert cached() == (first, True)
    assert cached() == (first, False)
    # other content of the same size, the modification time moved: a new signature
    st = os.stat("feats.bin")
    (tmp_path / "feats.bin").write_bytes(b"abcdeX")
    os.utime("feats.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = fresh()
    assert second != first and cached() == (second, True)
    # other size, same modification time: a new signature
    (tmp_path / "feats.bin").write_bytes(b"abcdeXY")
    os.utime("feats.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = fresh()
    assert third != second and cached() == (third, True)
    assert cached() == (third, False)
    # an ark named by the scp changes: a new signature; so does a file appearing
    kaldiio.save_ark("v.ark", {"a": np.ones(4, np.float32)})
    assert cached() == (fresh(), True)
    (tmp_path / "absent").write_text("now here")
    assert cached() == (fresh(), True)
    assert cached() == (fresh(), False)
    # other settings are another key
    other = cached_signature(files, {"k": 2}, follow_scp=True, cache=cache)
    assert other == signature(files, {"k": 2}, follow_scp=True)


def test_cached_signature_survives_a_broken_or_unwritable_cache(tmp_path):
    (tmp_path / "f").write_text("x")
    cache = tmp_path / "sig.json"
    cache.write_text("{not json")
    assert cached_signature([tmp_path / "f"], cache=cache) == signature([tmp_path / "f"])
    blocked = tmp_path / "file_not_dir"
    blocked.write_text("")
    sig = cached_signature([tmp_path / "f"], cache=blocked / "sig.json")
    assert sig == signature([tmp_path / "f"])
