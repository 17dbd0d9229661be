"""Former name of `apm.data.import_dirs` (the importer is not OLR-specific), kept so that
callers not yet renamed (tests/test_data_manifests.py, tests/test_features.py,
local/bench_features.py) still import; new code uses `apm.data.import_dirs.import_data_dirs`."""

from apm.data.import_dirs import import_data_dirs as import_olr

__all__ = ["import_olr"]
