"""Doctests of optional modules run only where their framework is installed."""

import importlib.util
import os
import tempfile

collect_ignore_glob = ["benchmarks/*", "examples/*"]
_OPTIONAL = {
    "src/recordkit/integrations/*lightning*.py": "torch",
    "src/recordkit/integrations/*keras*.py": "keras",
    "src/recordkit/plot.py": "matplotlib",
    "src/recordkit/recordset.py": "pandas",
    "src/recordkit/format/filters.py": "hdf5plugin",
    "src/recordkit/integrations/optuna.py": "optuna",
}
for _path, _module in _OPTIONAL.items():
    if importlib.util.find_spec(_module) is None:
        collect_ignore_glob.append(_path)

# load_all's header cache goes to a throwaway folder, not the user's ~/.cache.
os.environ.setdefault("RECORDKIT_CACHE_DIR", tempfile.mkdtemp(prefix="recordkit-test-cache-"))
