"""The ``recordkit`` command line.

Everything printed that comes from a file (names, run ids, params, metric and tensor names,
error texts) goes through :func:`recordkit.display.printable`: a stranger's record cannot
send control characters to the terminal. CSV cells are escaped against formulas."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import re
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recordkit.display import csv_safe_frame, printable
from recordkit.errors import (
    NotARecordError,
    RecordkitError,
    RecordkitWarning,
    RecordNotFoundError,
)
from recordkit.metric_modes import metric_direction
from recordkit.paths import run_id_problem
from recordkit.record import Record, load
from recordkit.recordset import RecordSet, load_all
from recordkit.repair import repair
from recordkit.verify import verify

__all__ = ["main"]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return printable(value, limit=24)


#: Longest run id, column name or path shown whole (a hostile file may hold megabytes).
_LONG = 64


def _run_cell(r: Record) -> tuple[str, str | None]:
    """The id column of a run and, when its run id is not well formed or not its file
    name, a note for stderr: such a run is listed by its file name, marked ``!``."""
    problem = run_id_problem(r.run_id, r.path)
    if problem is None:
        return r.run_id, None
    return (printable(r.path.stem, limit=_LONG) + "!",
            f"recordkit: '{printable(r.path, limit=4 * _LONG)}': its run id "
            f"'{printable(r.run_id, limit=_LONG)}' {problem}; listed by its file name, "
            "marked !")


def _load_all(args: argparse.Namespace) -> RecordSet:
    """The runs under ``args.root``: one line per unreadable file instead of a warning,
    and an error when there is none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        records = load_all(args.root, experiment=getattr(args, "experiment", None),
                           progress=_progress_wanted())
    for path, reason in records.skipped:
        print(f"recordkit: skipped {str(path)!r}: {printable(reason)}", file=sys.stderr)
    if not len(records):
        where = str(args.root) + (f"/{args.experiment}" if getattr(args, "experiment", None)
                                  else "")
        raise RecordNotFoundError(
            f"no records under {where!r}"
            + (f" ({len(records.skipped)} file(s) could not be read)" if records.skipped
               else "; record runs with recordkit.Recorder or a RecordCallback")
        )
    return records


def _progress_wanted() -> bool:
    """Progress bars only when a person watches: stderr is a terminal."""
    return sys.stderr.isatty()


def _key_params(records: RecordSet, limit: int = 5) -> list[str]:
    """The configuration keys worth a column (:attr:`Record.config`: params, then the
    captured ``lr``, ``optimizer``, ``batch_size``...), in the order the runs have them:
    those whose value differs between runs (a constant tells nothing); every key when
    none differs or there is one run. ``epochs`` is left to the epochs column."""
    values: dict[str, set[str]] = {}
    for r in records:
        for key, value in r.config.items():
            if key != "epochs":
                values.setdefault(key, set()).add(repr(value))
    varying = [k for k, v in values.items() if len(v) > 1]
    constant = [k for k, v in values.items() if len(v) <= 1]
    return (varying + constant if len(records) == 1 else varying or constant)[:limit]


#: The training loss as the frameworks name it (Lightning's ``_epoch`` suffix included).
_TRAINING_LOSS = re.compile(r"^(train(ing)?[_/])?loss(_epoch)?$", re.IGNORECASE)


def _key_metrics(summaries: list[dict[str, dict[str, Any]]], limit: int) -> list[str]:
    """The metrics worth a column: the training loss first, then validation metrics, then
    the others, each by how many runs have it; learning rates, times and counters last."""
    counts: dict[str, int] = {}
    for metrics in summaries:
        for metric in metrics:
            counts[metric] = counts.get(metric, 0) + 1
    ranked = sorted(counts, key=lambda m: (metric_direction(m) is None,
                                           not _TRAINING_LOSS.match(m),
                                           not re.search(r"(^|[_/])val", m.lower()),
                                           -counts[m], m))
    return ranked[:max(0, limit)]


def _final(stats: dict[str, Any] | None) -> str:
    """The final value of one metric of one run as a cell ("" when the run lacks it)."""
    if stats is None:
        return ""
    final = stats.get("final")
    return _short(math.nan if final is None else float(final))


def cmd_ls(args: argparse.Namespace) -> int:
    """A table of runs: id, experiment (when the root holds several), name, status,
    epochs, key configuration values and final metrics.

    Everything comes from what ``load_all`` read (a finished run's one-attribute summary,
    and its ``/info`` for the captured configuration): no run's history is read, so the
    table of thousands of runs costs what opening them costs."""
    records = _load_all(args)
    summaries = [r.metric_summaries() for r in records]
    keys = args.param or _key_params(records)
    if args.param:
        known = records.config_keys()
        unknown = [k for k in args.param if k not in known]
        if unknown:
            raise RecordkitError(
                f"ls --param {printable(unknown[0])!r}: no run has it in its configuration; "
                f"the runs have: {printable(', '.join(known), limit=4 * _LONG)}")
    metrics = args.metric or _key_metrics(summaries, args.metrics)
    several = len({r.experiment for r in records}) > 1
    rows = [["id", *(["experiment"] if several else []), "name", "status", "epochs",
             *(printable(k, limit=_LONG) for k in keys),
             *(printable(m, limit=_LONG) for m in metrics)]]
    notes = []
    for r, summary in zip(records, summaries):
        config = r.config
        cell, note = _run_cell(r)
        if note is not None:
            notes.append(note)
        rows.append([cell, *([_short(r.experiment)] if several else []), _short(r.name),
                     printable(r.status), str(r.epoch_count),
                     *(_short(config.get(k, "")) for k in keys),
                     *(_final(summary.get(m)) for m in metrics)])
    print(_table(rows))
    for note in notes:
        print(note, file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    r: Record = load(args.run, root=args.root)
    problem = run_id_problem(r.run_id, r.path)
    run = r.run_id if problem is None else (
        f"'{printable(r.run_id, limit=_LONG)}'  ! this run id {problem}")
    fields = {"run": run, "name": printable(r.name),
              "experiment": printable(r.experiment),
              "status": printable(r.status) + (f"  ({printable(r.error)})" if r.error else ""),
              "created": r.created.isoformat(), "path": printable(str(r.path))}
    for label, value in fields.items():
        print(f"{label:<11}{value}")
    print("params")
    params = r.flat_params()
    for key, value in params.items():
        print(f"  {printable(key)} = {printable(repr(value))}")
    captured = {k: v for k, v in r.config.items() if k not in params}
    if captured:
        print("captured")  # what the callbacks saw, under the names Record.config uses
        for key, value in captured.items():
            print(f"  {printable(key)} = {printable(repr(value))}")
    if r.restarts:
        print(f"restarts {len(r.restarts)}")
        for restart in r.restarts:
            print("  " + ", ".join(f"{printable(k)}={printable(repr(v), limit=_LONG)}"
                                   for k, v in restart.items()))
    print("system")
    for key in ("python", "os_name", "machine", "cpu_model", "memory", "hostname", "gpus"):
        if key in r.system:
            print(f"  {key} = {printable(repr(r.system[key]))}")
    print("history")
    for metric in r.history:
        values = r.history[metric]
        print(f"  {printable(metric)}: {len(values)} values, "
              f"final {_short(r.history.final(metric))}")
    print(f"snapshots {len(r.snapshot_epochs)} (epochs {r.snapshot_epochs[:10]}"
          f"{' ...' if len(r.snapshot_epochs) > 10 else ''})")
    for name in r.tensor_names:
        t = r.weight(name)
        print(f"  {printable(name)}: {printable(t.dtype_name)}{list(t.shape)}")
    r.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Read every chunk of each record; exit 1 when any is damaged."""
    damaged = 0
    for path in args.paths:
        report = verify(path, isolate=not args.in_process, timeout=args.timeout)
        print(_shown_report(report), flush=True)
        damaged += not report.ok
    if len(args.paths) > 1:
        print(f"{len(args.paths) - damaged} intact, {damaged} damaged")
    return 1 if damaged else 0


def _shown_report(report: Any) -> str:
    """A verify report to print: each problem and note one escaped line (a damaged
    file's names are in them)."""
    return str(dataclasses.replace(
        report, path=printable(str(report.path)),
        problems=[printable(p) for p in report.problems],
        notes=[printable(n) for n in report.notes]))


def cmd_repair(args: argparse.Namespace) -> int:
    """Fix the end-of-file address a kill during a flush can leave; then verify."""
    damaged = 0
    for path in args.paths:
        try:
            done = repair(path)
        except (RecordNotFoundError, NotARecordError) as err:  # the other paths go on
            print(f"recordkit: {printable(err)}", file=sys.stderr)
            damaged += 1
            continue
        print(printable(done), flush=True)
        report = verify(path)
        print(_shown_report(report), flush=True)
        damaged += not report.ok
    return 1 if damaged else 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Learning curves (or final values) of every run into an image file."""
    import matplotlib

    matplotlib.use("Agg")  # a file is written; no window is ever opened
    import matplotlib.pyplot as plt

    from recordkit import plot

    if args.kind == "final" and len(args.metric) > 1:
        raise _UsageError(f"plot --kind final takes one --metric; received {args.metric}")
    records = _load_all(args)
    if args.kind == "final":
        fig = plot.final_values(records, args.metric[0], by=args.by or ())
    else:
        fig = plot.learning_curves(records, args.metric)
    try:
        fig.savefig(args.output, dpi=args.dpi, bbox_inches="tight")
    except (OSError, ValueError) as err:
        raise _output_error(args.output, err) from None
    finally:
        plt.close(fig)
    print(f"wrote {args.output} ({len(records)} runs)")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """Per layer: how far the weights moved from the first snapshot to the last (L2 and
    relative to the first), in the last epoch (from the snapshot before), and the spectral
    norm at the last snapshot; with --plot, the trajectory, distance and spectral norm
    figures into one image."""
    from recordkit import weights

    record = load(args.run, root=args.root)
    epochs = record.snapshot_epochs
    if not epochs:
        raise _UsageError(f"{str(record.path)!r} holds no weight snapshots; record them "
                          "with snapshot_every= (or Recorder.snapshot)")
    last = epochs[-1]
    with record:
        moved = weights.distance(record, "init", last).iloc[-1]
        relative = weights.distance(record, "init", last, metric="relative").iloc[-1]
        recent = (weights.distance(record, "previous", last).iloc[-1]
                  if len(set(epochs)) > 1 else None)
        spectra = weights.spectra(record, last)
        sizes: dict[str, int] = {}
        aliases = record.tensor_aliases  # a tied tensor's parameters counted once
        for name in record.tensor_names:
            if name in aliases:
                continue
            shape = record.weight(name).shape
            layer = weights.layer_of(name)
            sizes[layer] = sizes.get(layer, 0) + math.prod(shape)
    norms = spectra.groupby("layer")["spectral_norm"].max() if len(spectra) else {}
    previous = max((e for e in epochs if e < last), default=None)
    print(f"{printable(record.name)} ({record.run_id}): {len(epochs)} snapshots, epochs "
          f"{epochs[0]}..{last}")
    rows = [["layer", "parameters", f"moved {epochs[0]}->{last}", "relative",
             f"moved {previous}->{last}" if previous is not None else "last epoch",
             f"spectral norm @{last}"]]
    for layer in moved.index:
        rows.append([printable(layer, limit=_LONG), str(sizes.get(layer, "")),
                     _short(float(moved[layer])), _short(float(relative[layer])),
                     "" if recent is None else _short(float(recent[layer])),
                     _short(float(norms[layer])) if layer in norms else ""])
    print(_table(rows))
    if args.plot is not None:
        _plot_weights(record, args.plot, args.dpi)
        print(f"wrote {args.plot}")
    return 0


def _plot_weights(record: Record, output: Path, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file is written; no window is ever opened
    import matplotlib.pyplot as plt

    from recordkit import plot

    if len(set(record.snapshot_epochs)) < 2:
        raise _UsageError(f"weights --plot: {str(record.path)!r} has one snapshot epoch; "
                          "the figures need at least two")
    fig, (path_ax, distance_ax, spectra_ax) = plt.subplots(1, 3, figsize=(18, 4.8))
    try:
        plot.weight_trajectory(record, ax=path_ax)
        plot.weight_distance(record, ax=distance_ax)
        try:
            plot.spectral_norms(record, ax=spectra_ax)
        except KeyError:  # no 2-D tensor: that panel says so
            spectra_ax.set_title("no 2-D tensor: no spectral norm")
        fig.tight_layout()
        fig.savefig(output, dpi=dpi, bbox_inches="tight")
    except (OSError, ValueError) as err:
        raise _output_error(output, err) from None
    finally:
        plt.close(fig)


def cmd_export(args: argparse.Namespace) -> int:
    """The RecordSet table (a row per run) as CSV or Parquet."""
    suffix = args.output.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise _UsageError(f"export -o {str(args.output)!r}: the file must end in .csv or "
                           ".parquet")
    frame = _load_all(args).to_dataframe()
    try:
        if suffix == ".csv":  # text cells escaped: a spreadsheet runs none as a formula;
            # CRLF rows (RFC 4180), so that a cell holding a CR is quoted, not a row break
            csv_safe_frame(frame).to_csv(args.output, index=False, lineterminator="\r\n")
        else:
            _to_parquet(frame, args.output)
    except OSError as err:
        raise _output_error(args.output, err) from None
    print(f"wrote {args.output} ({len(frame)} runs, {len(frame.columns)} columns)")
    return 0


def _to_parquet(frame: object, path: Path) -> None:
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    try:
        pa = importlib.import_module("pyarrow")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "export to .parquet needs pyarrow: pip install 'recordkit[analysis]'") from err

    try:
        frame.to_parquet(path, index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # A param with values of several types across runs (e.g. 8 and "auto") is kept
        # as text in that column.
        mixed = {c: frame[c].map(lambda v: None if v is None else str(v))
                 for c in frame.columns if frame[c].dtype == object}
        frame.assign(**mixed).to_parquet(path, index=False)


def cmd_import(args: argparse.Namespace) -> int:
    """Older tools' files written as records; what was imported before is skipped."""
    from recordkit import importers

    reader = importers.import_researcher if args.tool == "researcher" else (
        importers.import_record)
    report = reader(args.source, args.root, experiment=args.experiment,
                    progress=_progress_wanted())
    for source, reason in report.failed:
        print(f"recordkit: not imported {source!r}: {printable(reason)}", file=sys.stderr)
    print(f"imported {len(report.imported)} run(s) into {str(args.root)!r}"
          + (f"; skipped {len(report.skipped)} already imported" if report.skipped else ""))
    return 1 if report.failed else 0


class _UsageError(RecordkitError):
    """A command line that cannot be carried out as given (e.g. an unknown file type)."""


def _output_error(path: Path, err: Exception) -> RecordkitError:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return _UsageError(f"cannot write {str(path)!r}: {reason}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recordkit",
                                     description="Inspect recordkit records (HDF5 files).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ls", help="a table of runs", description="A table of runs.")
    p.add_argument("root", type=Path, help="folder of records")
    p.add_argument("--experiment", "-e", help="only this experiment")
    p.add_argument("--metrics", type=int, default=4, metavar="N",
                   help="show the final value of up to N metrics (default 4)")
    p.add_argument("--metric", "-m", action="append", metavar="NAME",
                   help="show this metric's final value (repeat for several)")
    p.add_argument("--param", "-p", action="append", metavar="KEY",
                   help="show this configuration key (a param or a captured fact such as "
                        "lr, optimizer, batch_size; repeat for several)")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("show", help="one run", description="One run in detail.")
    p.add_argument("run", help="a record path, or a run id with --root")
    p.add_argument("--root", type=Path, default=None, help="folder of records")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("verify", help="check records for damage",
                       description="Read every chunk of each record (checksums, structure, "
                       "safety) in a subprocess; exit 1 when any is damaged.")
    p.add_argument("paths", nargs="+", type=Path, help="record files")
    p.add_argument("--in-process", action="store_true",
                   help="read in this process (a badly damaged file can crash it)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds the reading subprocess may take per file")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("repair", help="make a record killed mid-flush readable",
                       description="Set the superblock's end-of-file address of records a "
                       "SIGKILL cut during a flush (`recordkit verify` says when), then verify.")
    p.add_argument("paths", nargs="+", type=Path, help="record files")
    p.set_defaults(func=cmd_repair)
    p = sub.add_parser("plot", help="learning curves of every run into an image",
                       description="Learning curves of every run (one stable colour per "
                       "run) for one or more metrics, or with --kind final the final value "
                       "per configuration (mean and sd over repeated runs and folds).")
    p.add_argument("root", type=Path, help="folder of records")
    p.add_argument("--metric", "-m", action="append", required=True,
                   help="metric to plot (repeat for several)")
    p.add_argument("--output", "-o", type=Path, required=True,
                   help="image file (.png, .pdf, .svg)")
    p.add_argument("--experiment", "-e", help="only this experiment")
    p.add_argument("--kind", choices=("curves", "final"), default="curves",
                   help="curves (default) or final values across configurations")
    p.add_argument("--by", action="append",
                   help="with --kind final: group by this param (repeatable); default: "
                   "repeated runs of one configuration (params hash)")
    p.add_argument("--dpi", type=int, default=120, help="resolution of a bitmap image")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("weights", help="how one run's weights moved, per layer",
                       description="Per layer: how far the weights moved from the first "
                       "snapshot to the last (L2, and relative to the first), in the last "
                       "epoch, and the spectral norm at the last snapshot.")
    p.add_argument("run", help="a record path, or a run id with --root")
    p.add_argument("--root", type=Path, default=None, help="folder of records")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="also draw the weight trajectory (PCA), the distance from the first "
                   "snapshot per layer and the spectral norms into this image")
    p.add_argument("--dpi", type=int, default=120, help="resolution of a bitmap image")
    p.set_defaults(func=cmd_weights)
    p = sub.add_parser("export", help="the table of runs as CSV or Parquet",
                       description="The RecordSet table (run fields, params, final, best "
                       "and epoch of best of each metric) as .csv or .parquet.")
    p.add_argument("root", type=Path, help="folder of records")
    p.add_argument("--output", "-o", type=Path, required=True,
                   help="FILE.csv or FILE.parquet")
    p.add_argument("--experiment", "-e", help="only this experiment")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="records from the older tools' files",
                       description="Write the older tools' files as records. Importing "
                       "the same files again skips what is already under the root.")
    tools = p.add_subparsers(dest="tool", required=True)
    for tool, source, text in (
        ("researcher", "a folder of researcher JSON files, or one file",
         "researcher JSON files (params, hash, timestamp, observations, folds)"),
        ("record", "a mongoexport file (JSON lines or a JSON array)",
         "the old Record tool's MongoDB documents (system info, params, models)"),
    ):
        t = tools.add_parser(tool, help=text, description=f"Import {text} as records.")
        t.add_argument("source", type=Path, help=source)
        t.add_argument("--root", type=Path, required=True, help="folder of records to write")
        t.add_argument("--experiment", "-e", default=None,
                       help="experiment of the new runs (default: the source's name)")
        t.set_defaults(func=cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and a non-zero exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    try:
        return int(args.func(args))
    except RecordkitError as err:  # its text may quote a file's names: escaped
        print(f"recordkit: {printable(err)}", file=sys.stderr)
        return 1
    except (ModuleNotFoundError, KeyError) as err:  # a missing extra; an unknown metric
        print(f"recordkit: {printable(err.args[0] if err.args else err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `recordkit ls ROOT | head`: the reader left; no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as err:  # a bug, or a file no check foresaw: still no traceback
        message = str(err).splitlines()[0] if str(err) else ""
        print(f"recordkit: `recordkit {printable(shlex.join(arguments))}` failed "
              f"unexpectedly, please report it ({type(err).__name__}: {printable(message)})",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
