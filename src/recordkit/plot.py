"""Plots of runs: learning curves, final values across runs, and how one run's weights moved.

Needs matplotlib (``pip install 'recordkit[analysis]'``), imported when a plot is drawn.
Every function returns the :class:`matplotlib.figure.Figure` it drew on, and draws on the
given ``ax`` instead of a new figure when one is passed.

Each run has one colour, derived from its run id alone (:func:`run_colour`), so the same run
has the same colour in every figure, whatever else is plotted with it; runs whose colours
clash are told apart by their markers (:func:`run_marker`). For colours that are distinct
within a sweep, pass ``colours=run_colours(sweep)`` to every figure of it.

Example:
    >>> import tempfile, recordkit as rk
    >>> from recordkit import plot
    >>> root = tempfile.mkdtemp()
    >>> for lr in (0.1, 0.01):
    ...     _ = rk.record_experiment({"lr": lr}, root, observations={"loss": [1.0, lr]})
    >>> runs = rk.load_all(root)
    >>> fig = plot.learning_curves(runs, "loss")
    >>> [line.get_color() for line in fig.axes[0].lines] == [
    ...     plot.run_colour(r.run_id) for r in runs]
    True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from recordkit.config import CONFIG_HASH_IGNORES
from recordkit.errors import RecordkitError
from recordkit.metric_modes import metric_mode
from recordkit.record import Record
from recordkit.weights import distance, layer_of, spectra, trajectory

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PALETTE",
    "final_values",
    "learning_curves",
    "run_colour",
    "run_colours",
    "run_label",
    "run_marker",
    "spectral_norms",
    "weight_distance",
    "weight_histograms",
    "weight_movement",
    "weight_trajectory",
]

#: Colours runs are given (matplotlib's tab10, then ColorBrewer's Dark2 and two of Set1:
#: all dark enough on white). Fixed here so that a run's colour does not depend on the
#: matplotlib version or style.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02",
    "#a6761d", "#666666", "#e41a1c", "#377eb8",
)
#: Markers runs are given, so two runs that share a colour are still told apart.
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def _preferred_slot(run_id: str) -> int:
    digest = hashlib.sha256(run_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % len(PALETTE)


def run_colour(run_id: str) -> str:
    """The colour of a run: a hash of its id into :data:`PALETTE`, the same in every
    figure (the default of every plot function). :func:`run_colours` gives colours that
    are distinct within a set of runs.

    Example:
        >>> run_colour("20240101-000000-000000-abcdef") == run_colour(
        ...     "20240101-000000-000000-abcdef")
        True
    """
    return PALETTE[_preferred_slot(run_id)]


def run_colours(run_ids: Iterable[str]) -> dict[str, str]:
    """Colours that are distinct within a set of runs (up to ``len(PALETTE)`` runs), for
    the ``colours=`` option of the plot functions.

    A hash of the run id alone (:func:`run_colour`, the default) cannot be both stable and
    distinct: 20 colours give two of 8 runs the same colour 4 times in 5. Here each run
    takes its :func:`run_colour` unless a run created before it (a smaller run id) in the
    same set took it already; then it takes the next free colour of the palette. The
    result depends only on the set of runs, never on their order, so:

    - figures drawn with the ``run_colours`` of one whole sweep agree with each other,
      also when one of them shows only a part of the sweep;
    - adding later runs (a sweep that goes on) keeps the colours of the earlier ones;
    - a run that did not give way keeps its :func:`run_colour`.

    Beyond ``len(PALETTE)`` runs colours repeat (every block of 20 runs is distinct);
    :func:`run_marker` still tells those apart.

    Example:
        >>> ids = [f"20240101-000000-00000{i}-abcdef" for i in range(8)]
        >>> colours = run_colours(ids)
        >>> len(set(colours.values())), colours == run_colours(reversed(ids))
        (8, True)
        >>> run_colours(ids[:5]) == {i: colours[i] for i in ids[:5]}
        True
    """
    colours: dict[str, str] = {}
    taken: set[int] = set()
    for run_id in sorted(set(run_ids)):
        if len(taken) == len(PALETTE):
            taken.clear()
        slot = _preferred_slot(run_id)
        while slot in taken:
            slot = (slot + 1) % len(PALETTE)
        taken.add(slot)
        colours[run_id] = PALETTE[slot]
    return colours


def _colours_of(records: Sequence[Record], given: Mapping[str, str] | None) -> dict[str, str]:
    """The colours of the runs of one figure: :func:`run_colour`, overridden by *given*."""
    colours = {r.run_id: run_colour(r.run_id) for r in records}
    colours.update(given or {})
    return colours


def run_marker(run_id: str) -> str:
    """The marker of a run: another part of the same hash into :data:`MARKERS`."""
    digest = hashlib.sha256(run_id.encode("utf-8")).digest()
    return MARKERS[int.from_bytes(digest[4:8], "big") % len(MARKERS)]


def run_label(record: Record) -> str:
    """The label of a run in a legend: its name and the end of its id (names repeat)."""
    if record.name == record.run_id:
        return record.run_id
    return f"{record.name} ({record.run_id[-6:]})"


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "recordkit.plot needs matplotlib: pip install 'recordkit[analysis]'"
        ) from err
    return plt


def _records(runs: Record | Iterable[Record]) -> list[Record]:
    return [runs] if isinstance(runs, Record) else list(runs)


def _figure_and_axes(ax: Axes | None, count: int = 1, *, width: float = 6.4,
                     height: float = 4.2) -> tuple[Figure, list[Axes]]:
    if ax is not None:
        return cast("Figure", ax.figure), [ax] * count
    plt = _pyplot()
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, list(axes[0])


def learning_curves(runs: Record | Iterable[Record], metrics: str | Sequence[str], *,
                    ax: Axes | None = None, legend: bool = True,
                    colours: Mapping[str, str] | None = None) -> Figure:
    """Learning curves of many runs: a line per run and metric, value against epoch.

    Args:
        runs: a record, a RecordSet or any iterable of records.
        metrics: one metric name or several. Without *ax*, each metric gets its own axes
            side by side; with *ax*, all are drawn on it (a line style per metric).
        ax: draw on this Axes.
        legend: add a legend (labels are :func:`run_label`, plus the metric when several
            share one Axes).
        colours: ``{run_id: colour}`` for some or all runs, e.g. :func:`run_colours` of
            a whole sweep for colours distinct within it; by default each run's
            :func:`run_colour`.

    Raises:
        KeyError: no run has any of *metrics*.
    """
    records = _records(runs)
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not any(m in r.history for r in records for m in names):
        known = sorted({m for r in records for m in r.history})
        raise KeyError(f"no run of the {len(records)} given has metric(s) {names}; "
                       f"metrics: {known[:20]}")
    fig, axes = _figure_and_axes(ax, len(names))
    palette = _colours_of(records, colours)
    shared = ax is not None and len(names) > 1
    styles = ("-", "--", ":", "-.")
    for i, (metric, target) in enumerate(zip(names, axes)):
        for record in records:
            if metric not in record.history:
                continue
            label = run_label(record) + (f" {metric}" if shared else "")
            epochs = record.history.epochs(metric)
            target.plot(epochs, record.history[metric],
                        color=palette[record.run_id], label=label,
                        linestyle=styles[i % len(styles)] if shared else "-",
                        marker=run_marker(record.run_id), markersize=4,
                        markevery=max(1, len(epochs) // 10))
        _integer_epochs(target)
        target.set_xlabel("epoch")
        target.set_ylabel(metric if not shared else ", ".join(names))
        if not shared:
            target.set_title(metric)
    if legend:
        # One legend, beside the last axes when it would hide curves inside.
        if len(records) > 4 or len(names) > 1:
            axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
        else:
            axes[-1].legend(fontsize="small")
    return fig


def _integer_epochs(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _fold_finals(record: Record, metric: str) -> list[float] | None:
    """The last value of each fold when the run stored *metric* in the fold form (a list of
    per-fold lists, the researcher layout), else None."""
    if "observations" not in record.extras:
        return None
    observations = record.extras["observations"]
    series = observations.get(metric) if isinstance(observations, Mapping) else None
    if isinstance(series, list) and series and all(
            isinstance(f, list) and f for f in series):
        try:
            return [float(f[-1]) for f in series]
        except (TypeError, ValueError):
            return None
    return None


def final_values(runs: Iterable[Record], metric: str, *, by: Sequence[str] | str = (),
                 use: str = "final", ax: Axes | None = None,
                 colours: Mapping[str, str] | None = None) -> Figure:
    """The final (or best) value of *metric* compared across runs: a bar per group with the
    mean and an error bar of one standard deviation over its repeated runs or folds, and
    a dot per run (or per fold).

    Args:
        runs: the runs.
        metric: the metric.
        by: configuration keys to group by (:attr:`Record.config`: params in dotted
            form and captured facts such as ``lr`` or ``batch_size``); by default runs are
            grouped by config hash (repeated runs of one configuration), each bar
            labelled with the keys that tell the configurations apart.
        use: ``"final"`` (the last value) or ``"best"`` (the maximum for metrics that
            grow when better, else the minimum).

    Raises:
        RecordkitError: a key of *by* no run has.
        ax: draw on this Axes.
        colours: ``{run_id: colour}`` for some or all runs; by default each run's
            :func:`run_colour` (see :func:`learning_curves`).

    A run stored with folds (researcher's list of per-fold lists) contributes each fold's
    last value; otherwise a run contributes one value.
    """
    if use not in ("final", "best"):
        raise ValueError(f"final_values(use={use!r}): must be 'final' or 'best'")
    keys = [by] if isinstance(by, str) else list(by)
    records = _records(runs)
    palette = _colours_of(records, colours)
    groups: dict[tuple[Any, ...], list[tuple[Record, list[float]]]] = {}
    for record in records:
        if metric not in record.history:
            continue
        values = _fold_finals(record, metric) if use == "final" else None
        if values is None:
            history = record.history[metric]
            if use == "final":
                values = [float(history[-1])] if len(history) else []
            else:
                finite = history[np.isfinite(history)]
                pick = np.max if metric_mode(metric) == "max" else np.min
                values = [float(pick(finite))] if len(finite) else []
        config = record.config
        key = tuple(str(config.get(k)) for k in keys) if keys else (record.config_hash,)
        groups.setdefault(key, []).append((record, values))
    if not groups:
        raise KeyError(f"no run has metric {metric!r}")
    known = {k for members in groups.values() for r, _ in members for k in r.config}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise RecordkitError(
            f"final_values(by={unknown[0]!r}): no run has it in its configuration; the "
            f"runs have: {', '.join(sorted(known)) or '(nothing)'}")
    differing = [] if keys else _differing_keys([m[0][0] for m in groups.values()])
    fig, (target,) = _figure_and_axes(ax)
    labels = []
    for x, (key, members) in enumerate(groups.items()):
        values = [v for _, vs in members for v in vs]
        mean = float(np.mean(values)) if values else math.nan
        spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        first = members[0][0]
        colour = palette[first.run_id] if len(members) == 1 else "#7f7f7f"
        target.bar(x, mean, yerr=spread, color=colour, alpha=0.6, capsize=4)
        for record, vs in members:
            target.scatter([x] * len(vs), vs, color=palette[record.run_id], zorder=3,
                           s=14)
        if keys:
            label = ", ".join(f"{k}={v}" for k, v in zip(keys, key))
        elif differing:
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={first.config.get(k)}"
                              for k in differing)
        else:
            label = first.name if first.name != first.run_id else first.config_hash[:8]
        labels.append(f"{label}\n(n={len(values)})")
    target.set_xticks(range(len(labels)), labels, fontsize="small")
    target.set_ylabel(f"{metric} ({use})")
    target.set_title(f"{use} {metric}: mean ± sd over runs/folds")
    return fig


def _differing_keys(records: list[Record], most: int = 3) -> list[str]:
    """The configuration keys whose values tell the groups' first runs apart (seeds,
    paths and the like left out), at most *most* of them: the labels of the bars."""
    configs = [r.config for r in records]
    if len(configs) < 2:
        return []
    keys: dict[str, None] = {}
    for config in configs:
        keys.update(dict.fromkeys(config))
    differ = [k for k in keys if not CONFIG_HASH_IGNORES.search(k.rsplit(".", 1)[-1])
              and len({repr(c.get(k)) for c in configs}) > 1]
    return differ[:most]


def weight_movement(record: Record, *, by: str = "layer", tensors: Sequence[str] | None = None,
                    ax: Axes | None = None) -> Figure:
    """How far the weights moved per epoch: for each layer (or tensor), the L2 norm of the
    difference between each snapshot and the previous one, against the later snapshot's
    epoch.

    Args:
        record: one run with at least two snapshots.
        by: ``"layer"`` (tensors grouped by their name without the last part, e.g.
            ``fc1.weight`` and ``fc1.bias`` → ``fc1``) or ``"tensor"``.
        tensors: only these tensors; all by default.
        ax: draw on this Axes.

    Raises:
        KeyError: the run has fewer than two snapshots.
    """
    if by not in ("layer", "tensor"):
        raise ValueError(f"weight_movement(by={by!r}): must be 'layer' or 'tensor'")
    aliases = record.tensor_aliases  # a tied tensor drawn once
    names = list(tensors) if tensors is not None else [
        n for n in record.tensor_names if n not in aliases]
    squared: dict[str, dict[int, float]] = {}
    with record:
        for name in names:
            history = record.weight(name)
            if len(history) < 2:
                continue
            group = layer_of(name) if by == "layer" else name
            previous = np.asarray(history[0], dtype=np.float64)
            for i in range(1, len(history)):
                current = np.asarray(history[i], dtype=np.float64)
                moved = float(np.sum((current - previous) ** 2))
                epoch = int(history.epochs[i])
                squared.setdefault(group, {})
                squared[group][epoch] = squared[group].get(epoch, 0.0) + moved
                previous = current
    if not squared:
        raise KeyError(f"{str(record.path)!r} has fewer than two snapshots of "
                       f"{names[:5] if names else 'any tensor'}; nothing moved")
    fig, (target,) = _figure_and_axes(ax)
    for group, per_epoch in squared.items():
        epochs = sorted(per_epoch)
        target.plot(epochs, [math.sqrt(per_epoch[e]) for e in epochs], marker="o",
                    label=group)
    _integer_epochs(target)
    target.set_xlabel("epoch")
    target.set_ylabel("‖Δw‖₂ since previous snapshot")
    target.set_title(f"weight movement per {by}: {run_label(record)}")
    target.legend(fontsize="small")
    return fig


def weight_histograms(record: Record, tensor: str, *, epochs: Sequence[int] | None = None,
                      bins: int = 40, ax: Axes | None = None) -> Figure:
    """Histograms of one tensor's values across snapshots, on shared bins, coloured from
    early (light) to late (dark).

    Args:
        record: one run.
        tensor: the tensor name.
        epochs: the snapshot epochs to draw; up to six spread over the run by default.
        bins: number of bins.
        ax: draw on this Axes.
    """
    history = record.weight(tensor)
    available = [int(e) for e in history.epochs]
    if not available:
        raise KeyError(f"tensor {tensor!r} of {str(record.path)!r} has no snapshots")
    if epochs is None:
        picks = np.unique(np.linspace(0, len(available) - 1, min(6, len(available)))
                          .round().astype(int))
        chosen = [available[i] for i in picks]
    else:
        chosen = list(epochs)
    with record:
        arrays = [np.asarray(history.at(e), dtype=np.float64).ravel() for e in chosen]
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    plt = _pyplot()
    cmap = plt.get_cmap("viridis_r")
    fig, (target,) = _figure_and_axes(ax)
    for i, (epoch, values) in enumerate(zip(chosen, arrays)):
        shade = 0.15 + 0.85 * (i / max(1, len(chosen) - 1))
        target.hist(values, bins=edges.tolist(), histtype="step", color=cmap(shade),
                    label=f"epoch {epoch}")
    target.set_xlabel(tensor)
    target.set_ylabel("count")
    target.set_title(f"{tensor} across snapshots: {run_label(record)}")
    target.legend(fontsize="small")
    return fig


def weight_trajectory(record: Record, *, tensors: Sequence[str] | None = None,
                      ax: Axes | None = None) -> Figure:
    """The path of the weights over epochs in the plane of their first two principal
    axes (:func:`recordkit.weights.trajectory`; Li et al. 2018), a point per snapshot
    epoch labelled with its epoch, axes labelled with the share of variance they hold.

    Args:
        record: one run with at least two snapshot epochs.
        tensors: the tensors making up the weights (see ``trajectory``).
        ax: draw on this Axes.

    Example:
        >>> weight_trajectory(record).savefig("trajectory.png")  # doctest: +SKIP
    """
    path = trajectory(record, k=min(2, len(set(record.snapshot_epochs))), tensors=tensors)
    coordinates = path.coordinates
    if coordinates.shape[1] < 2:  # two epochs: the line between them
        coordinates = np.column_stack([coordinates[:, 0], np.zeros(len(coordinates))])
    ratio = [*path.explained_variance_ratio.tolist(), 0.0][:2]
    fig, (target,) = _figure_and_axes(ax)
    colour = run_colour(record.run_id)
    target.plot(coordinates[:, 0], coordinates[:, 1], color=colour, marker="o",
                markersize=4, label=run_label(record))
    for epoch, (x, y) in zip(path.epochs, coordinates):
        target.annotate(str(epoch), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize="small")
    target.scatter(coordinates[:1, 0], coordinates[:1, 1], color=colour, marker="s", s=40,
                   zorder=3, label=f"epoch {path.epochs[0]}")
    target.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
    target.set_ylabel(f"PC2 ({ratio[1]:.1%} of variance)")
    target.set_title(f"weight trajectory: {run_label(record)}")
    target.legend(fontsize="small")
    return fig


def weight_distance(record: Record, reference: int | str = "init", *, metric: str = "l2",
                    per: str = "layer", tensors: Sequence[str] | None = None,
                    ax: Axes | None = None) -> Figure:
    """How far each layer (or tensor) is from *reference* at each snapshot epoch
    (:func:`recordkit.weights.distance`): with ``metric="cosine"`` the layer rotation
    curves of Carbonnelle & De Vleeschouwer (2019).

    Args:
        record: one run.
        reference: ``"init"`` (the first snapshot), ``"previous"`` or an epoch.
        metric: ``"l2"``, ``"cosine"`` or ``"relative"``.
        per: ``"layer"``, ``"tensor"`` or ``"model"``.
        tensors: only these tensors.
        ax: draw on this Axes.

    Example:
        >>> weight_distance(record, metric="cosine").savefig("rotation.png")  # doctest: +SKIP
    """
    frame = distance(record, reference, per=per, metric=metric, tensors=tensors)
    fig, (target,) = _figure_and_axes(ax)
    for group in frame.columns:
        values = frame[group]
        kept = values.notna()
        target.plot(frame.index[kept].to_numpy(), values[kept].to_numpy(), marker="o",
                    markersize=3, label=str(group))
    _integer_epochs(target)
    labels = {"l2": "‖w - w_ref‖₂", "cosine": "cosine distance 1 - cos(w, w_ref)",
              "relative": "‖w - w_ref‖₂ / ‖w_ref‖₂"}
    target.set_xlabel("epoch")
    target.set_ylabel(labels[metric])
    target.set_title(f"distance from {reference} per {per}: {run_label(record)}")
    target.legend(fontsize="small")
    return fig


def spectral_norms(record: Record, *, tensors: Sequence[str] | None = None,
                   ax: Axes | None = None) -> Figure:
    """The spectral norm (largest singular value) of each 2-D tensor and conv kernel at
    each snapshot epoch (:func:`recordkit.weights.spectra`), a line per tensor labelled
    with its layer (with the tensor's name when a layer has several).

    Args:
        record: one run.
        tensors: only these tensors (every tensor with a matrix by default).
        ax: draw on this Axes.

    Example:
        >>> spectral_norms(record).savefig("spectra.png")  # doctest: +SKIP
    """
    table = spectra(record, tensors=tensors)
    if table.empty:
        raise KeyError(f"{str(record.path)!r} has no 2-D tensor (nor conv kernel) to take "
                       "a spectral norm of")
    per_layer = table.groupby("layer")["tensor"].nunique()
    fig, (target,) = _figure_and_axes(ax)
    for name, rows in table.groupby("tensor", sort=False):
        layer = str(rows["layer"].iloc[0])
        target.plot(rows["epoch"].to_numpy(), rows["spectral_norm"].to_numpy(), marker="o",
                    markersize=3, label=layer if per_layer[layer] == 1 else str(name))
    _integer_epochs(target)
    target.set_xlabel("epoch")
    target.set_ylabel("spectral norm ‖W‖₂")
    target.set_title(f"spectral norm per layer: {run_label(record)}")
    target.legend(fontsize="small")
    return fig
