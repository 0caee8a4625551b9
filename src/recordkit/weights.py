"""Analysis of a run's weight history, read tensor by tensor from its record.

What a per-epoch snapshot of every tensor allows, each function reading one tensor's
snapshots at a time (never every epoch of the model at once):

- :func:`distance`: how far the weights moved between two epochs, or from a reference
  (``"init"``, the first snapshot; ``"previous"``) to every epoch, per tensor, layer or
  model, as an L2 norm, a cosine distance (layer rotation, Carbonnelle & De Vleeschouwer
  2019) or relative to the reference's norm;
- :func:`trajectory`: the PCA of the flattened weights over epochs (the trajectory plot of
  Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"), exact, from the
  epochs x epochs Gram matrix accumulated tensor by tensor; optionally its axes in weight
  space, the plane a loss-landscape plot evaluates the loss over;
- :func:`spectra`: per 2-D tensor (and conv kernel) and epoch, the spectral norm,
  Frobenius norm, stable rank and, optionally, the power-law exponent alpha of the
  eigenvalues of ``W^T W`` (WeightWatcher; Martin & Mahoney 2021);
- :func:`interpolate`: state dicts on the line between two epochs or two runs, for the
  user's own loss evaluation (Goodfellow et al. 2015; mode connectivity, Garipov 2018);
- :func:`restore`: a snapshot loaded back into a torch ``nn.Module`` or a Keras model,
  e.g. to rewind to an early epoch (Frankle et al. 2020, "Linear Mode Connectivity and
  the Lottery Ticket Hypothesis").

No framework is imported here: :func:`restore` builds the model's tensors through the
framework module the model already loaded.

Example:
    >>> import tempfile, numpy as np, recordkit as rk
    >>> from recordkit import weights
    >>> with rk.Recorder(tempfile.mkdtemp(), system=False) as rec:
    ...     for epoch in range(3):
    ...         rec.snapshot({"fc.weight": np.full((2, 2), float(epoch), np.float32)},
    ...                      epoch=epoch)
    >>> path = weights.trajectory(rk.load(rec.path), k=1)
    >>> path.epochs, path.explained_variance_ratio.round(6).tolist()
    ([0, 1, 2], [1.0])
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from recordkit.errors import RecordkitError
from recordkit.record import Record
from recordkit.views import TensorHistory, require_pandas

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Trajectory", "WeightsError", "distance", "interpolate", "layer_of", "matrices",
           "power_law_alpha", "restore", "spectra", "trajectory"]

PER = ("tensor", "layer", "model")
METRICS = ("l2", "cosine", "relative")
REFERENCES = ("init", "previous")
#: Elements per block of the streamed sums: a block of each operand stays in cache.
_BLOCK = 1 << 16
#: Tensors of at least this many elements are summed on two threads.
_SPLIT = 1 << 21


class WeightsError(RecordkitError, ValueError):
    """A weight analysis cannot be done as asked: an epoch the record has no snapshot of,
    a tensor it does not hold, or a model whose tensors do not match the snapshot."""


def layer_of(name: str) -> str:
    """The layer a tensor belongs to: its name without the last part.

    Example:
        >>> layer_of("net.0.weight"), layer_of("dense/kernel"), layer_of("scale")
        ('net.0', 'dense', 'scale')
    """
    for separator in (".", "/"):
        if separator in name:
            return name.rsplit(separator, 1)[0]
    return name


# --- reading ------------------------------------------------------------------------------


def _where(record: Record) -> str:
    return repr(str(record.path))


def _histories(record: Record, tensors: Sequence[str] | None) -> list[TensorHistory]:
    """The histories of *tensors*; by default of every tensor, a tied tensor once (under
    the name it is stored by, not its aliases)."""
    if tensors is None:
        aliases = record.tensor_aliases
        names = [n for n in record.tensor_names if n not in aliases]
    else:
        names = list(tensors)
    known = set(record.tensor_names)
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = ", ".join(repr(n) for n in record.tensor_names[:20]) or "none"
        raise WeightsError(f"{_where(record)} holds no tensor {unknown[0]!r}; its tensors: "
                           f"{listed}")
    return [record.weight(n) for n in names]


def _rows_by_epoch(history: TensorHistory) -> dict[int, int]:
    """``{epoch: snapshot index}`` of one tensor (the last snapshot of an epoch taken
    twice, as :meth:`Record.weights` reads it)."""
    return {int(e): i for i, e in enumerate(history.epochs)}


def _epoch_error(record: Record, epoch: object, what: str = "") -> WeightsError:
    return WeightsError(
        f"{_where(record)} has no snapshot at epoch {epoch!r}{what}; snapshot epochs: "
        f"{record.snapshot_epochs}")


def _float64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def _flat(array: np.ndarray) -> np.ndarray:
    """A 1-D float view (float32 and float64 kept, other dtypes as float64) of a tensor."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float64)
    return flat


def _sums(reference: np.ndarray, current: np.ndarray, *, norm: bool
          ) -> tuple[float, float]:
    """(``‖current - reference‖²``, ``‖current‖²`` when *norm* else 0) in float64 sums of
    blocks (each block summed in the arrays' dtype, in cache); a large tensor's two halves
    on two threads (numpy's loops release the GIL)."""
    a, b = _flat(reference), _flat(current)
    if a.dtype != b.dtype:
        a, b = a.astype(np.float64), b.astype(np.float64)
    if a.size < _SPLIT:
        return _block_sums(a, b, norm)
    half = (a.size // 2 // _BLOCK) * _BLOCK
    # Handed over in a list the thread empties: the executor's work item keeps its
    # arguments a moment after the result is set, which would keep this snapshot alive
    # while the next one is read.
    future = _helper().submit(_handed_sums, [a[:half], b[:half]], norm)
    try:
        mine = _block_sums(a[half:], b[half:], norm)
    finally:
        theirs = future.result()  # never leave the thread reading a freed array
    return mine[0] + theirs[0], mine[1] + theirs[1]


def _handed_sums(operands: list[np.ndarray], norm: bool) -> tuple[float, float]:
    a, b = operands
    operands.clear()
    return _block_sums(a, b, norm)


def _block_sums(a: np.ndarray, b: np.ndarray, norm: bool) -> tuple[float, float]:
    buffer = np.empty(min(_BLOCK, a.size), a.dtype)
    squared = 0.0
    norm_squared = 0.0
    for start in range(0, a.size, _BLOCK):
        part = b[start:start + _BLOCK]
        d = np.subtract(part, a[start:start + _BLOCK], out=buffer[:part.size])
        squared += float(np.dot(d, d))
        if norm:
            norm_squared += float(np.dot(part, part))
    return squared, norm_squared


_helper_pool: concurrent.futures.ThreadPoolExecutor | None = None
_helper_pid = 0
_helper_lock = threading.Lock()


def _helper() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that sums half of a large tensor (a new one after a fork)."""
    global _helper_pool, _helper_pid
    with _helper_lock:
        if _helper_pool is None or _helper_pid != os.getpid():
            _helper_pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="recordkit-weights")
            _helper_pid = os.getpid()
        return _helper_pool


def _folded_sums(history: TensorHistory, rows: list[int], reference: np.ndarray, *,
                 norm: bool) -> list[tuple[float, float]] | None:
    """What :func:`_sums` gives for each ``history[row]`` against *reference*, summed
    piece by piece as the rows are read and checked (``TensorHistory.fold_rows``): no
    row is held, and each span of the reference is read from memory once for all the
    rows (it stays in the cache while the same span of each row is summed); None when
    the tensor is not stored so that this applies (then read each row and use
    :func:`_sums`)."""
    dtype = reference.dtype
    if (dtype not in (np.float32, np.float64) or dtype.name != history.dtype_name
            or tuple(reference.shape) != tuple(history.shape)):
        return None
    ref = np.ascontiguousarray(reference).reshape(-1)

    def fold(_: int, piece: np.ndarray, at: int) -> tuple[float, float]:
        current = piece.view(dtype)
        start = at // dtype.itemsize
        current_norm = float(np.dot(current, current)) if norm else 0.0
        d = np.subtract(current, ref[start:start + current.size], out=current)  # in place
        return float(np.dot(d, d)), current_norm

    folded = history.fold_rows(rows, fold)
    if folded is None:
        return None
    sums = []
    for parts in folded:
        squared = norm_squared = 0.0
        for _, (piece_squared, piece_norm) in parts:
            squared += piece_squared
            norm_squared += piece_norm
        sums.append((squared, norm_squared))
    return sums


def _norm_squared(array: np.ndarray) -> float:
    flat = _flat(array)
    return float(sum(float(np.dot(flat[s:s + _BLOCK], flat[s:s + _BLOCK]))
                     for s in range(0, flat.size, _BLOCK)))


# --- distance -----------------------------------------------------------------------------


def _pairs(record: Record, epochs: list[int], a: int | str, b: int | None
           ) -> list[tuple[int, int]]:
    """The (reference epoch, epoch) pairs one tensor's distances are taken between."""
    if a == "previous":
        if b is not None:
            return [(e, b) for e in [max((x for x in epochs if x < b), default=None)]
                    if e is not None]
        return list(itertools.pairwise(epochs))
    reference = epochs[0] if a == "init" else int(a)
    if reference not in epochs:
        return []
    targets = epochs if b is None else [b]
    return [(reference, e) for e in targets if e in epochs]


def distance(record: Record, a: int | str = "init", b: int | None = None, *,
             per: str = "layer", metric: str = "l2",
             tensors: Sequence[str] | None = None) -> pd.DataFrame:
    """How far the weights moved: between epochs *a* and *b*, or, with *b* None, from
    reference *a* to every snapshot epoch.

    Args:
        record: the run.
        a: an epoch, ``"init"`` (each tensor's first snapshot: with the callbacks, the
            end of the first snapshotted epoch, not the weights before training) or
            ``"previous"`` (each epoch against the snapshot before it).
        b: an epoch, or None for every snapshot epoch.
        per: ``"tensor"``, ``"layer"`` (tensors grouped by :func:`layer_of`) or
            ``"model"`` (every tensor as one vector).
        metric: ``"l2"`` (``‖w_b - w_a‖``), ``"cosine"`` (``1 - cos(w_a, w_b)``: layer
            rotation) or ``"relative"`` (``‖w_b - w_a‖ / ‖w_a‖``).
        tensors: only these tensors (all by default).

    Returns:
        A DataFrame indexed by epoch (the later epoch of each pair; ``attrs["reference"]``
        says what it was compared with), a column per tensor, layer or ``"model"``.
        A group not whole at an epoch (one of its tensors first snapshotted later) holds
        NaN there.

    Raises:
        WeightsError: an unknown tensor, an epoch without a snapshot, or a bad option.

    Example:
        >>> moved = distance(record, "init", per="layer", metric="cosine")  # doctest: +SKIP
        >>> moved.plot()  # layer rotation curves                           # doctest: +SKIP
    """
    _check_choice("distance", "per", per, PER)
    _check_choice("distance", "metric", metric, METRICS)
    if isinstance(a, str) and a not in REFERENCES:
        raise WeightsError(f"distance(a={a!r}): must be an epoch, 'init' or 'previous'")
    pd = require_pandas()
    snapshot_epochs = set(record.snapshot_epochs)
    for epoch in (a, b):
        if isinstance(epoch, (int, np.integer)) and int(epoch) not in snapshot_epochs:
            raise _epoch_error(record, epoch)
    # per (group, epoch): [‖Δ‖², ‖w_a‖², ‖w_b‖², tensors summed]
    sums: dict[str, dict[int, list[float]]] = {}
    members: dict[str, int] = {}  # tensors per group
    order: list[int] = []
    with record:
        for history in _histories(record, tensors):
            group = {"tensor": history.name, "layer": layer_of(history.name),
                     "model": "model"}[per]
            members[group] = members.get(group, 0) + 1
            rows = _rows_by_epoch(history)
            pairs = _pairs(record, sorted(rows), a, None if b is None else int(b))
            held: dict[int, np.ndarray] = {}  # at most the reference and the current row
            # From one reference (not "previous"): the other rows summed as read, together
            folded: dict[int, tuple[float, float]] = {}
            if a != "previous" and pairs:
                ref = pairs[0][0]
                held = {ref: history[rows[ref]]}
                ref_norm = _norm_squared(held[ref]) if metric != "l2" else 0.0
                others = [epoch for _, epoch in pairs if epoch != ref]
                sums_of = _folded_sums(history, [rows[e] for e in others], held[ref],
                                       norm=metric == "cosine") if others else None
                folded = dict(zip(others, sums_of or []))
            for ref, epoch in pairs:
                if ref not in held:
                    held = {ref: history[rows[ref]]}
                    ref_norm = _norm_squared(held[ref]) if metric != "l2" else 0.0
                current: np.ndarray | None = None
                if epoch in folded:
                    squared, norm = folded[epoch]
                else:
                    current = held[ref] if epoch == ref else history[rows[epoch]]
                    squared, norm = _sums(held[ref], current, norm=metric == "cosine")
                cell = sums.setdefault(group, {}).setdefault(epoch, [0.0, 0.0, 0.0, 0])
                cell[0] += squared
                cell[1] += ref_norm
                cell[2] += norm
                cell[3] += 1
                if epoch not in order:
                    order.append(epoch)
                if a == "previous" and current is not None:  # the next pair's reference
                    held = {epoch: current}
                    ref_norm = norm if metric == "cosine" else (
                        _norm_squared(current) if metric == "relative" else 0.0)
                del current
    columns = {group: pd.Series({e: _metric(metric, *cell[:3]) if cell[3] == members[group]
                                 else math.nan for e, cell in cells.items()},
                                dtype=np.float64)
               for group, cells in sums.items()}
    frame = pd.DataFrame(columns, index=pd.Index(sorted(order), name="epoch"))
    frame.attrs["reference"] = a
    frame.attrs["metric"] = metric
    return frame


def _metric(metric: str, squared: float, ref_norm: float, norm: float) -> float:
    if metric == "l2":
        return math.sqrt(squared)
    ref = math.sqrt(ref_norm)
    if metric == "relative":
        return math.sqrt(squared) / ref if ref else math.nan
    cur = math.sqrt(norm)
    if not ref or not cur:
        return math.nan
    # 1 - cos from ‖a - b‖² = ‖a‖² + ‖b‖² - 2 a·b, written so that a small rotation is
    # not lost in 1 - (a number close to 1)
    return (squared - (ref - cur) ** 2) / (2 * ref * cur)


def _check_choice(function: str, option: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise WeightsError(f"{function}({option}={value!r}): must be one of "
                           f"{', '.join(repr(x) for x in allowed)}")


# --- trajectory ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """The PCA of a run's weights over epochs (see :func:`trajectory`)."""

    #: The snapshot epochs, one row of :attr:`coordinates` each.
    epochs: list[int]
    #: ``(epochs, k)``: each epoch's weights projected on the first *k* principal axes.
    coordinates: np.ndarray
    #: ``(k,)``: the variance along each axis (``ddof=1``, as sklearn's PCA).
    explained_variance: np.ndarray
    #: ``(k,)``: that variance over the total variance of the trajectory.
    explained_variance_ratio: np.ndarray
    #: The tensors the weights were made of.
    tensors: list[str]
    #: With ``directions=True``: ``{tensor: (k, *shape) array}``, the principal axes in
    #: weight space (unit vectors over all the tensors together), signed so that
    #: ``weights(epoch i) = center + Σ_j coordinates[i, j] * directions[:, j]``: the
    #: plane a loss-landscape plot evaluates the loss over (Li et al. 2018).
    directions: dict[str, np.ndarray] | None = None
    #: With ``directions=True``: ``{tensor: array}``, the mean of the snapshots.
    center: dict[str, np.ndarray] | None = None

    def frame(self) -> pd.DataFrame:
        """The coordinates as a DataFrame indexed by epoch, columns ``pc1``, ``pc2``..."""
        pd = require_pandas()
        return pd.DataFrame(self.coordinates, index=pd.Index(self.epochs, name="epoch"),
                            columns=[f"pc{i + 1}" for i in range(self.coordinates.shape[1])])


def trajectory(record: Record, k: int = 2, *, tensors: Sequence[str] | None = None,
               max_rows_bytes: int = 512 << 20, directions: bool = False) -> Trajectory:
    """The PCA of the flattened weights over the snapshot epochs (Li et al. 2018).

    Exact: the epochs x epochs Gram matrix of the weights (each tensor less its first
    snapshot, so that float32 sums keep the movement, not the weights' size) is summed
    tensor by tensor, then centred and diagonalised; memory is the E x E matrix plus the
    snapshots of one tensor held at once: all of them when they fit in *max_rows_bytes*,
    else as many as fit (at least two), each other snapshot then read once per block.

    Args:
        record: the run.
        k: how many principal axes.
        tensors: the tensors making up the weights; by default every tensor that has a
            snapshot at every snapshot epoch (one first snapshotted later is left out).
        max_rows_bytes: the most bytes of one tensor's snapshots held at once.
        directions: also give the principal axes and the mean in weight space (one more
            read of every snapshot, tensor by tensor; ``k + 1`` float64 copies of the
            model in memory).

    Returns:
        A :class:`Trajectory`: coordinates ``(epochs, k)`` (equal to
        ``sklearn.decomposition.PCA(k).fit_transform`` of the stacked flattened weights,
        up to the sign of each axis) and the explained variance.

    Raises:
        WeightsError: fewer than two snapshot epochs, a tensor missing at one of them, or
            *k* not in ``1..epochs``.

    Example:
        >>> import tempfile, recordkit as rk
        >>> with rk.Recorder(tempfile.mkdtemp(), system=False) as rec:
        ...     for epoch, w in enumerate([[0.0, 0.0], [1.0, 1.0], [2.0, 1.0]]):
        ...         rec.snapshot({"w": np.array(w)}, epoch=epoch)
        >>> path = trajectory(rk.load(rec.path), k=2)
        >>> path.epochs, path.explained_variance_ratio.round(3).tolist()
        ([0, 1, 2], [0.951, 0.049])
    """
    epochs = sorted(set(record.snapshot_epochs))
    count = len(epochs)
    if count < 2:
        raise WeightsError(f"trajectory: {_where(record)} has {count} snapshot epoch(s); "
                           "a trajectory needs at least two")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= count:
        raise WeightsError(f"trajectory(k={k!r}): must be an int from 1 to the number of "
                           f"snapshot epochs ({count})")
    gram = np.zeros((count, count))
    used: list[str] = []
    with record:
        histories = _histories(record, tensors)
        for history in histories:
            rows = _rows_by_epoch(history)
            missing = [e for e in epochs if e not in rows]
            if missing:
                if tensors is None:
                    continue
                raise WeightsError(
                    f"trajectory: tensor {history.name!r} of {_where(record)} has no "
                    f"snapshot at epoch(s) {missing[:10]}; leave it out of tensors=")
            used.append(history.name)
            _add_gram(gram, history, [rows[e] for e in epochs], max_rows_bytes)
    if not used:
        raise WeightsError(f"trajectory: no tensor of {_where(record)} has a snapshot at "
                           f"every snapshot epoch {epochs}")
    centring = np.eye(count) - 1.0 / count
    centred = centring @ gram @ centring
    values, vectors = np.linalg.eigh((centred + centred.T) / 2)
    top = np.argsort(values)[::-1]
    values = np.clip(values[top], 0.0, None)
    vectors = vectors[:, top]
    coordinates = vectors[:, :k] * np.sqrt(values[:k])
    total = float(values.sum())
    variance = values[:k] / (count - 1)
    ratio = values[:k] / total if total > 0 else np.zeros(k)
    if not directions:
        return Trajectory(epochs, coordinates, variance, ratio, used)
    # axis j = Σ_i x_i u_ij / s_j (the u_j sum to zero: the mean drops out)
    scale = np.sqrt(values[:k])
    weights_of_rows = np.divide(vectors[:, :k], scale, out=np.zeros((count, k)),
                                where=scale > 0)
    axes: dict[str, np.ndarray] = {}
    center: dict[str, np.ndarray] = {}
    with record:
        for name in used:
            history = record.weight(name)
            rows = _rows_by_epoch(history)
            axes[name], center[name] = _axes_of(history, [rows[e] for e in epochs],
                                                weights_of_rows)
    return Trajectory(epochs, coordinates, variance, ratio, used, axes, center)


def _axes_of(history: TensorHistory, rows: list[int], weights_of_rows: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """One tensor's part of the principal axes and of the mean, from its snapshots less
    the first (float64 sums; one snapshot read at a time)."""
    first = history[rows[0]]
    base = _float64(first)
    axes = np.zeros((weights_of_rows.shape[1], base.size))
    mean = np.zeros(base.size)
    for i, row in enumerate(rows[1:], start=1):
        moved = _float64(history[row]).reshape(-1) - base.reshape(-1)
        axes += weights_of_rows[i][:, None] * moved
        mean += moved
    mean = base.reshape(-1) + mean / len(rows)
    return axes.reshape(-1, *first.shape), mean.reshape(first.shape)


def _add_gram(gram: np.ndarray, history: TensorHistory, rows: list[int],
              max_rows_bytes: int) -> None:
    """Add one tensor's part of the Gram matrix of the trajectory: the products of its
    snapshots less the first, blocks of snapshots held at once."""
    first = _flat(history[rows[0]])
    itemsize = np.dtype(first.dtype).itemsize
    held = max(1, min(len(rows), max_rows_bytes // max(1, first.size * itemsize) - 1))
    for start in range(1, len(rows), held):
        block_rows = rows[start:start + held]
        block = np.empty((len(block_rows), first.size), first.dtype)
        for i, row in enumerate(block_rows):
            np.subtract(_flat(history[row]), first, out=block[i])
        span = slice(start, start + len(block_rows))
        gram[span, span] += _products(block, block)
        for j in range(start + len(block_rows), len(rows)):
            other = np.subtract(_flat(history[rows[j]]), first)
            products = _products(block, other[None, :])[:, 0]
            gram[span, j] += products
            gram[j, span] += products


def _products(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right.T`` in float64 sums of float32 blocks."""
    out = np.zeros((left.shape[0], right.shape[0]))
    for start in range(0, left.shape[1], _BLOCK):
        out += left[:, start:start + _BLOCK] @ right[:, start:start + _BLOCK].T
    return out


# --- spectra ------------------------------------------------------------------------------


def matrices(name: str, array: np.ndarray) -> list[np.ndarray] | None:
    """The matrices a tensor's spectrum is taken from, None for a tensor with none (a
    vector or scalar). A 2-D tensor is one matrix; a conv kernel gives one matrix per
    kernel position, input x output channels, as WeightWatcher does: a torch kernel is
    ``(out, in, *kernel)``; a Keras one (its name ends in ``kernel``) is
    ``(*kernel, in, out)``.

    Example:
        >>> [m.shape for m in matrices("conv.weight", np.zeros((8, 3, 2, 2)))][:2]
        [(8, 3), (8, 3)]
        >>> len(matrices("conv2d/kernel", np.zeros((3, 3, 4, 16))))
        9
    """
    if array.ndim < 2:
        return None
    if array.ndim == 2:
        return [array]
    if name.endswith("kernel"):  # Keras: channels last
        flat = array.reshape(-1, *array.shape[-2:])
    else:  # torch: (out, in, *kernel)
        flat = np.moveaxis(array.reshape(*array.shape[:2], -1), -1, 0)
    return list(flat)


def spectra(record: Record, epoch: int | Sequence[int] | None = None, *,
            tensors: Sequence[str] | None = None, alpha: bool = False) -> pd.DataFrame:
    """Spectral statistics of each 2-D tensor (and conv kernel, see :func:`matrices`) of
    each snapshot: spectral norm (largest singular value), Frobenius norm, stable rank
    (``‖W‖_F² / ‖W‖₂²``) and, with *alpha*, the power-law exponent of the tail of the
    eigenvalues of ``W^T W`` (WeightWatcher's alpha: the maximum-likelihood fit with the
    lower cut-off that minimises the Kolmogorov-Smirnov distance, Clauset et al. 2009).
    A conv kernel's matrices are taken together: the largest singular value of any, the
    norm of the whole kernel, one set of eigenvalues.

    Args:
        record: the run.
        epoch: one epoch, several, or every snapshot epoch (None).
        tensors: only these tensors (every tensor with a matrix by default).
        alpha: also fit the power law (an ``alpha`` column; NaN with too few eigenvalues).

    Returns:
        A DataFrame, a row per tensor and epoch: ``epoch``, ``tensor``, ``layer``,
        ``spectral_norm``, ``frobenius_norm``, ``stable_rank`` (and ``alpha``).

    Example:
        >>> table = spectra(record, alpha=True)                              # doctest: +SKIP
        >>> table.pivot(index="epoch", columns="layer", values="spectral_norm")  # doctest: +SKIP
    """
    pd = require_pandas()
    snapshot_epochs = set(record.snapshot_epochs)
    wanted = None if epoch is None else (
        [int(epoch)] if isinstance(epoch, (int, np.integer)) else [int(e) for e in epoch])
    for e in wanted or []:
        if e not in snapshot_epochs:
            raise _epoch_error(record, e)
    rows: list[dict[str, Any]] = []
    with record:
        for history in _histories(record, tensors):
            if len(history.shape) < 2:
                if tensors is not None:
                    raise WeightsError(
                        f"spectra: tensor {history.name!r} of {_where(record)} has shape "
                        f"{list(history.shape)}: no matrix to take a spectrum of")
                continue
            if history.dtype_name != "bfloat16" and np.dtype(
                    history.dtype_name).kind != "f":
                continue  # integer tensors (counters, indices) have no spectrum worth it
            by_epoch = _rows_by_epoch(history)
            for e in sorted(by_epoch) if wanted is None else wanted:
                if e not in by_epoch:
                    continue
                stats = _spectrum(history.name, history[by_epoch[e]], alpha)
                rows.append({"epoch": e, "tensor": history.name,
                             "layer": layer_of(history.name), **stats})
    columns = ["epoch", "tensor", "layer", "spectral_norm", "frobenius_norm",
               "stable_rank", *(["alpha"] if alpha else [])]
    return pd.DataFrame(rows, columns=columns)


def _spectrum(name: str, array: np.ndarray, alpha: bool) -> dict[str, float]:
    found = matrices(name, _float64(array))
    assert found is not None
    singular = np.concatenate([np.linalg.svd(m, compute_uv=False) for m in found])
    spectral = float(singular.max()) if singular.size else 0.0
    frobenius = float(np.sqrt(np.sum(singular ** 2)))
    stats = {"spectral_norm": spectral, "frobenius_norm": frobenius,
             "stable_rank": frobenius ** 2 / spectral ** 2 if spectral else math.nan}
    if alpha:
        stats["alpha"] = power_law_alpha(singular ** 2)
    return stats


def power_law_alpha(eigenvalues: np.ndarray, *, least: int = 10) -> float:
    """The exponent of a power law fitted to the tail of *eigenvalues*: for each
    candidate lower cut-off the maximum-likelihood alpha, ``1 + n / Σ log(λ / λ_min)``,
    and the cut-off kept whose fit is nearest the tail (Kolmogorov-Smirnov distance), as
    the ``powerlaw`` package WeightWatcher uses does. NaN with fewer than *least*
    positive eigenvalues.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> samples = (1 - rng.random(20000)) ** (-1 / 2.5)  # alpha 3.5 above 1
        >>> round(power_law_alpha(samples), 1)
        3.5
    """
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    values = values[values > 0]
    if values.size < least:
        return math.nan
    logs = np.log(values)
    best = (math.inf, math.nan)
    # cut-offs leaving at least *least* values in the tail (a power law of 2 points fits)
    for start in range(0, values.size - least + 1):
        tail = logs[start:] - logs[start]
        n = tail.size
        total = float(tail.sum())
        if total <= 0:
            continue
        fitted = 1.0 + n / total
        empirical = np.arange(n) / n
        model = 1.0 - np.exp(-(fitted - 1.0) * tail)
        ks = float(np.max(np.abs(empirical - model)))
        if ks < best[0]:
            best = (ks, fitted)
    return best[1]


# --- interpolate --------------------------------------------------------------------------


def interpolate(record: Record, a: int, b: int, alphas: Iterable[float], *,
                other: Record | None = None) -> Iterator[tuple[float, dict[str, np.ndarray]]]:
    """State dicts on the line between the snapshot at epoch *a* and that at epoch *b*
    (of *other* when given: two runs with the same tensors), ``(1 - α) w_a + α w_b`` for
    each α of *alphas*, in each tensor's own dtype; integer tensors (counters) are taken
    from the nearer end. Both ends are read once; each state dict is a new one.

    Yields:
        ``(alpha, {tensor name: array})``, to load with :func:`restore`.

    Raises:
        WeightsError: an epoch without a snapshot, or ends whose tensors differ.

    Example:
        >>> import tempfile, recordkit as rk
        >>> with rk.Recorder(tempfile.mkdtemp(), system=False) as rec:
        ...     rec.snapshot({"w": np.zeros(2)}, epoch=0)
        ...     rec.snapshot({"w": np.ones(2)}, epoch=1)
        >>> [(alpha, state["w"].tolist())
        ...  for alpha, state in interpolate(rk.load(rec.path), 0, 1, [0.25, 1.0])]
        [(0.25, [0.25, 0.25]), (1.0, [1.0, 1.0])]

        With a model: ``for alpha, state in interpolate(...): evaluate(restore(model,
        state))``, the loss along the line (Goodfellow et al. 2015).
    """
    second = record if other is None else other
    start = _snapshot(record, a)
    end = _snapshot(second, b)
    if set(start) != set(end):
        only_a = sorted(set(start) - set(end))[:5]
        only_b = sorted(set(end) - set(start))[:5]
        raise WeightsError(
            f"interpolate: the snapshots differ in tensors: epoch {a} of {_where(record)} "
            f"alone has {only_a}, epoch {b} of {_where(second)} alone has {only_b}")
    for name in start:
        if start[name].shape != end[name].shape:
            raise WeightsError(
                f"interpolate: tensor {name!r} is {list(start[name].shape)} at epoch {a} "
                f"of {_where(record)} but {list(end[name].shape)} at epoch {b} of "
                f"{_where(second)}")
    for alpha in alphas:
        t = float(alpha)
        state: dict[str, np.ndarray] = {}
        for name, left in start.items():
            right = end[name]
            if left.dtype.kind in "biu":
                state[name] = (left if t < 0.5 else right).copy()
            else:
                mixed = (1.0 - t) * _float64(left) + t * _float64(right)
                state[name] = mixed.astype(left.dtype)
        yield t, state


def _snapshot(record: Record, epoch: int) -> dict[str, np.ndarray]:
    if int(epoch) not in record.snapshot_epochs:
        raise _epoch_error(record, epoch)
    return record.weights(int(epoch))


# --- restore ------------------------------------------------------------------------------

#: The prefix ``torch.compile`` gives the names of a compiled module's tensors.
_COMPILED = "_orig_mod."


def restore(model: Any, record: Record | Mapping[str, np.ndarray], epoch: int = -1, *,
            strict: bool = True) -> Any:
    """Load a snapshot into *model*: the exact inverse of what the callbacks snapshot.

    A torch ``nn.Module`` (a LightningModule too) is given its ``state_dict`` tensors
    (parameters and buffers, bfloat16 bit for bit, on each tensor's device and in its
    dtype) through ``load_state_dict(strict=strict)``; names that differ only by
    ``torch.compile``'s ``_orig_mod.`` prefix are matched. A Keras model has each
    variable of ``model.weights`` assigned by its path (``dense/kernel``), the name the
    Keras callback stores it under.

    Args:
        model: a torch ``nn.Module`` or a Keras model.
        record: the run, or a state dict of arrays (e.g. from :func:`interpolate`).
        epoch: the snapshot epoch (-1: the last snapshot); ignored for a state dict.
        strict: refuse a model tensor the snapshot lacks, or a snapshot tensor the model
            lacks; without it those are left as they are. A shape mismatch is always
            refused.

    Returns:
        *model*, its weights those of the snapshot.

    Raises:
        WeightsError: no snapshot at *epoch*, a tensor missing on either side (with
            *strict*) or of another shape, or a model of no known kind.

    Example:
        >>> restore(model, record, epoch=2).eval()  # rewind to epoch 2  # doctest: +SKIP
    """
    if isinstance(record, Record):
        where = f"the snapshot at epoch {epoch} of {_where(record)}"
        if epoch != -1 and int(epoch) not in record.snapshot_epochs:
            raise _epoch_error(record, epoch, " to restore")
        if not record.snapshot_epochs:
            raise WeightsError(f"{_where(record)} holds no weight snapshots to restore")
        arrays = record.weights(int(epoch))
    elif isinstance(record, Mapping):
        where = "the given state dict"
        arrays = dict(record)
    else:
        raise WeightsError(f"restore: takes a Record or a state dict of arrays, not a "
                           f"{type(record).__name__}")
    if callable(getattr(model, "state_dict", None)) and callable(
            getattr(model, "load_state_dict", None)):
        _restore_torch(model, arrays, where, strict)
    elif isinstance(getattr(model, "weights", None), (list, tuple)):
        _restore_keras(model, arrays, where, strict)
    else:
        raise WeightsError(f"restore: cannot load weights into a {type(model).__name__}; "
                           "pass a torch nn.Module or a Keras model")
    return model


def _matched(names: Iterable[str], arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """``{model name: snapshot name}``, ``torch.compile``'s prefix told apart."""
    found = {}
    for name in names:
        for candidate in (name, name.removeprefix(_COMPILED), _COMPILED + name):
            if candidate in arrays:
                found[name] = candidate
                break
    return found


def _check_names(model_names: list[str], matched: dict[str, str],
                 arrays: Mapping[str, np.ndarray], where: str, strict: bool,
                 hint: str = "") -> None:
    if model_names and not matched:  # even with strict=False: nothing would be loaded
        raise WeightsError(
            f"restore: none of the model's {len(model_names)} tensors ({model_names[:3]}) "
            f"is in {where}; its tensors: {sorted(arrays)[:5]}.{hint} Build the model the "
            "run trained")
    if not strict:
        return
    missing = [n for n in model_names if n not in matched]
    if missing:
        raise WeightsError(
            f"restore: {where} has no tensor {missing[0]!r} of the model ({len(missing)} "
            f"missing: {missing[:5]}); snapshot tensors: {sorted(arrays)[:10]}. A tensor "
            "left out of the snapshots (include/exclude, frozen) keeps the model's value "
            "with strict=False")
    extra = sorted(set(arrays) - set(matched.values()))
    if extra:
        raise WeightsError(
            f"restore: {where} holds tensor {extra[0]!r} that the model has not "
            f"({len(extra)} such: {extra[:5]}); model tensors: {model_names[:10]}. Build "
            "the model the run trained, or pass strict=False to load the tensors both have")


def _shape_error(name: str, stored: tuple[int, ...], wanted: tuple[int, ...],
                 where: str) -> WeightsError:
    return WeightsError(f"restore: tensor {name!r} of {where} has shape {list(stored)} but "
                        f"the model's is {list(wanted)}; build the model the run trained")


def _restore_torch(module: Any, arrays: Mapping[str, np.ndarray], where: str,
                   strict: bool) -> None:
    torch = sys.modules["torch"]  # loaded: the model is a torch module
    current = module.state_dict()
    matched = _matched(current, arrays)
    _check_names(list(current), matched, arrays, where, strict)
    state = {}
    for name, source in matched.items():
        target = current[name]
        array = arrays[source]
        if tuple(array.shape) != tuple(target.shape):
            raise _shape_error(source, tuple(array.shape), tuple(target.shape), where)
        state[name] = _torch_tensor(torch, array).to(dtype=target.dtype,
                                                     device=target.device)
    module.load_state_dict(state, strict=strict)


def _torch_tensor(torch: Any, array: np.ndarray) -> Any:
    """A torch tensor of *array*'s values; bfloat16 (ml_dtypes) through its bits."""
    if array.dtype.name == "bfloat16":
        bits = np.ascontiguousarray(array).view(np.int16)
        return torch.from_numpy(bits.copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def _restore_keras(model: Any, arrays: Mapping[str, np.ndarray], where: str,
                   strict: bool) -> None:
    variables = {str(getattr(v, "path", None) or v.name): v for v in model.weights}
    matched = _matched(variables, arrays)
    _check_names(list(variables), matched, arrays, where, strict,
                 hint=" Keras numbers the layers and models it names itself, per process "
                 "(dense_1, sequential_2...): name them where the model is built.")
    for name, source in matched.items():
        variable = variables[name]
        array = arrays[source]
        if tuple(array.shape) != tuple(variable.shape):
            raise _shape_error(source, tuple(array.shape), tuple(variable.shape), where)
    for name, source in matched.items():
        variable = variables[name]
        array = np.asarray(arrays[source])
        dtype = str(getattr(variable.dtype, "name", variable.dtype))
        variable.assign(array if array.dtype.name == dtype else array.astype(dtype))
