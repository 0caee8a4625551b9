"""recordkit: record machine-learning experiments into HDF5.

One file per run holds the hyperparameters, a description of the machine, the per-epoch
history and snapshots of every weight tensor. The framework integrations live in
``recordkit.integrations`` and are imported on their own.

Example:
    >>> import tempfile, recordkit as rk
    >>> root = tempfile.mkdtemp()
    >>> rec = rk.Recorder(root, experiment="demo", name="first", params={"lr": 1e-3})
    >>> rec.log({"loss": 0.5}, epoch=0)
    >>> run_id = rec.save()
    >>> rk.load(run_id, root=root).history["loss"].tolist()
    [0.5]
"""

from recordkit import recorder as _recorder
from recordkit.errors import RecordkitError
from recordkit.record import Record, load
from recordkit.recorder import Recorder
from recordkit.recordset import RecordSet, load_all
from recordkit.researcher import record_experiment

# Recorder.get reads a run back: the write side gets the read side's load from here, so
# that it never imports the read side itself (docs/ARCHITECTURE.md).
_recorder.set_loader(load)

__all__ = [
    "Record",
    "RecordSet",
    "Recorder",
    "RecordkitError",
    "__version__",
    "load",
    "load_all",
    "record_experiment",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recordkit")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


__version__ = _version()
