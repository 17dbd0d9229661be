"""mini-OLR: an OLR-shaped language-recognition corpus synthesized offline with eSpeak NG."""

from apm.corpus.build import make_mini_olr
from apm.corpus.spec import DEV_SETS, SCORED_SETS, SETS, SIZES, TEST_SETS

__all__ = ["DEV_SETS", "SCORED_SETS", "SETS", "SIZES", "TEST_SETS", "make_mini_olr"]
