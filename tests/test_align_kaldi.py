"""Kaldi alignments made with --snip-edges=true, re-gridded onto our frames (apm.align.kaldi)."""

from __future__ import annotations

import numpy as np
import pytest
from test_align import make_cuts, speech_like

from apm.align.arkio import read_labels, write_labels
from apm.align.config import AlignConfig, load_align_config
from apm.align.kaldi import snipped_num_frames, unsnip_labels
from apm.align.pipeline import align_phones
from apm.utils import ApmError, num_frames


@pytest.mark.parametrize("n", [400, 401, 479, 480, 559, 560, 16000, 16079, 16080, 23999])
def test_unsnip_is_the_nearest_centre_and_gives_our_count(n):
    m = snipped_num_frames(n)
    t_ours = num_frames(n, 16000)
    assert m == t_ours - 2
    kaldi_centre = 160 * np.arange(m) + 200  # window [160 s, 160 s + 400)
    ours_centre = 160 * np.arange(t_ours) + 80  # snip-edges=false
    nearest = np.abs(ours_centre[:, None] - kaldi_centre[None, :]).argmin(axis=1)
    labels = np.arange(m) + 10  # label = Kaldi frame index (+10)
    regrid = unsnip_labels(labels)
    assert len(regrid) == t_ours
    assert np.array_equal(regrid, nearest + 10)
    assert regrid[0] == 10 and regrid[-1] == m - 1 + 10  # edges repeat the edge labels


def test_unsnip_empty_is_left_alone():
    assert len(unsnip_labels(np.zeros(0, dtype=np.int32))) == 0
    assert snipped_num_frames(399) == 0


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    return make_cuts(tmp, {f"utt{i}": speech_like(1.2 + 0.3 * i, seed=i) for i in range(2)})


def kaldi_snipped_dir(tmp_path, cuts):
    """Labels on Kaldi's snip-edges grid: label = 1 + Kaldi frame index // 5 % 4."""
    d = tmp_path / "kaldi"
    d.mkdir()
    (d / "phones.txt").write_text("<eps> 0\nSIL 1\nAA_B 2\nAA_E 3\nK_S 4\n")
    items = []
    for cid, cut in sorted(cuts.items()):
        m = snipped_num_frames(round(cut.duration * 16000))
        items.append((cid, (1 + np.arange(m) // 5 % 4).astype(np.int32)))
    write_labels(items, d / "ali.ark", d / "ali.scp")
    return d


def test_kaldi_import_with_snip_edges(speech_dir, tmp_path):
    src, cuts = speech_dir
    kdir = kaldi_snipped_dir(tmp_path, cuts)
    align_phones(src, tmp_path / "snip", f"kaldi:{kdir}", AlignConfig(kaldi_snip_edges=True))
    align_phones(src, tmp_path / "plain", f"kaldi:{kdir}", AlignConfig())
    snip, plain = read_labels(tmp_path / "snip/ali.scp"), read_labels(tmp_path / "plain/ali.scp")
    for cid, cut in cuts.items():
        assert len(snip[cid]) == len(plain[cid]) == cut.num_frames
        # re-gridded: one frame later than the raw labels, first label repeated
        assert np.array_equal(snip[cid][1:-1], plain[cid][:-2])
        assert snip[cid][0] == snip[cid][1]
    # Kaldi frames 0-4 are SIL, 5-14 AA (AA_B, AA_E), 15-19 K: ours are one frame later
    assert list(snip["utt0"][:17]) == [0] * 6 + [1] * 10 + [2]


def test_snip_edges_option_in_conf(tmp_path, repo_root):
    assert load_align_config(repo_root / "egs/olr/conf/align.yaml").kaldi_snip_edges is False
    (tmp_path / "a.yaml").write_text("kaldi_snip_edges: true\n")
    assert load_align_config(tmp_path / "a.yaml").kaldi_snip_edges is True
    (tmp_path / "a.yaml").write_text("kaldi_snip_edges: yes please\n")
    with pytest.raises(ApmError, match="kaldi_snip_edges' is 'yes please'; it must be true or"):
        load_align_config(tmp_path / "a.yaml")
