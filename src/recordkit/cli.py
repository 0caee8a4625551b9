"""The ``recordkit`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from recordkit import format as fmt
from recordkit.errors import RecordkitError
from recordkit.record import Record, load
from recordkit.recordset import load_all

__all__ = ["main"]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def cmd_ls(args: argparse.Namespace) -> int:
    records = load_all(args.root, experiment=args.experiment)
    if not len(records):
        print(f"recordkit: no records under {args.root!r}", file=sys.stderr)
        return 1
    keys = sorted({k for r in records for k in fmt.flatten_params(r._params)})[:4]
    metrics = sorted({m for r in records for m in r.history})[:4]
    rows = [["id", "name", "status", "epochs", *keys, *metrics]]
    for r in records:
        flat = fmt.flatten_params(r._params)
        rows.append([r.run_id, _short(r.name), r.status, str(len(r.epochs)),
                     *(_short(flat.get(k, "")) for k in keys),
                     *(_short(r.history.final(m)) if m in r.history else "" for m in metrics)])
    print(_table(rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    r: Record = load(args.run, root=args.root)
    print(f"run       {r.run_id}\nname      {r.name}\nexperiment {r.experiment}")
    print(f"status    {r.status}{'  (' + r.error + ')' if r.error else ''}")
    print(f"created   {r.created.isoformat()}\npath      {r.path}")
    print("params")
    for key, value in fmt.flatten_params(r._params).items():
        print(f"  {key} = {value!r}")
    print("system")
    for key in ("python", "os_name", "machine", "cpu_model", "memory", "hostname", "gpus"):
        if key in r.system:
            print(f"  {key} = {r.system[key]!r}")
    print("history")
    for metric in r.history:
        values = r.history[metric]
        print(f"  {metric}: {len(values)} values, final {_short(r.history.final(metric))}")
    print(f"snapshots {len(r.snapshot_epochs)} (epochs {r.snapshot_epochs[:10]}"
          f"{' ...' if len(r.snapshot_epochs) > 10 else ''})")
    for name in r.tensor_names:
        t = r.weight(name)
        print(f"  {name}: {t.dtype_name}{list(t.shape)}")
    r.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recordkit",
                                     description="Inspect recordkit records (HDF5 files).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ls", help="a table of runs", description="A table of runs.")
    p.add_argument("root", type=Path, help="folder of records")
    p.add_argument("--experiment", "-e", help="only this experiment")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("show", help="one run", description="One run in detail.")
    p.add_argument("run", help="a record path, or a run id with --root")
    p.add_argument("--root", type=Path, default=None, help="folder of records")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RecordkitError as err:
        print(f"recordkit: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
