"""``load_all`` of 100,000 closed runs (issue 18 item 6): header cache warm, every file
opened with the page cache dropped, and ``workers=1`` against ``workers=2``.

Targets on the 2-core machine: at most 5 s with the header cache warm; at most 1 ms a run
cold (no header cache, page cache dropped); a speed-up from 1 to 2 workers. Each figure
is quoted beside a baseline measured in the same run, alternated and paired with it:
``os.stat`` of every file (warm), and plain h5py reading every file's ``summary``
attribute (cold, the same page-cache drop before each). Cold figures are taken with the
folder's run index (``.recordkit-index.jsonl``, its pages dropped too) and without it
(``index=False``: every file opened). Each figure's CPU time (this process and its
workers) is printed beside it, and how busy the CPUs were (``/proc/stat``): a speed-up
from a second worker needs an idle core.

    python benchmarks/bench_load_all.py DIR                  # 100,000 runs built in DIR
    python benchmarks/bench_load_all.py DIR --runs 10000 --repeat 3

The records are built once into ``DIR/records/sweep`` (reused when there are enough):
64 template runs (10 params, 3 metrics x 20 epochs, each its own values) written with
``Recorder``, then copies of them, each given its own run id, name, creation time and
its header CRCs and summary rewritten as recordkit writes them, so that ``load`` and
``verify`` accept each as a record of its own (params repeat every 64 runs).
Building 100,000 takes about 10 minutes on 2 cores and 3.7 GB. The page cache is dropped
with ``posix_fadvise(POSIX_FADV_DONTNEED)`` on each file after ``sync`` (no root needed;
``fincore`` checks it when installed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

METRICS = ("loss", "val_loss", "val_accuracy")
EPOCHS = 20
TEMPLATES = 64
WARM_TARGET = 5.0
COLD_TARGET_PER_RUN = 1e-3


def _params(i: int, rng: np.random.Generator) -> dict[str, object]:
    params: dict[str, object] = {f"p{k}": float(rng.choice([0.1, 0.01, 0.001]))
                                 for k in range(8)}
    params.update({"width": int(rng.choice([16, 32, 64])), "seed": i})
    return params


def _templates(folder: Path) -> list[Path]:
    import recordkit as rk

    made = sorted((folder / "sweep").glob("*.h5")) if (folder / "sweep").is_dir() else []
    if len(made) >= TEMPLATES:
        return made[:TEMPLATES]
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for t in range(TEMPLATES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = rk.Recorder(folder, experiment="sweep", name=f"t{t}", params=_params(t, rng),
                              system=False)
        for epoch in range(EPOCHS):
            rec.log({m: float(rng.random()) for m in METRICS}, epoch=epoch)
        rec.save()
    return sorted((folder / "sweep").glob("*.h5"))


_TEMPLATE_DATA: dict[str, tuple[dict[str, object], dict[str, str]]] = {}


def _template_data(template: str) -> tuple[dict[str, object], dict[str, str]]:
    """The template's summary (without its digest) and its header values, read once."""
    if template not in _TEMPLATE_DATA:
        import h5py

        from recordkit.format.attrs import attr_str, read_text
        from recordkit.format.layout import HEADER_CRC_FIELDS

        with h5py.File(template, "r", locking=False) as f:
            text = attr_str(f, "summary")
            values = {key: (read_text(f, key) or "") if key.startswith("/")
                      else attr_str(f, key) for key in HEADER_CRC_FIELDS}
        summary = json.loads(text.rsplit(', "sha256"', 1)[0] + "}")
        _TEMPLATE_DATA[template] = (summary, values)
    return _TEMPLATE_DATA[template]


def _copy_range(args: tuple[list[str], str, int, int]) -> int:
    """Copies *start*..*stop* of the templates into *folder*, each with its own run id,
    name, creation and end time: the root attributes rewritten in place, the header CRCs
    and the summary (with its digest) made from the new values, as recordkit's own
    writers make them (``write_root_attrs``, ``sign_header``, ``write_summary``; those
    read the values back from the file, 3x slower). The params stay the template's."""
    import hashlib

    import h5py

    from recordkit.codec import dumps_json
    from recordkit.format.attrs import write_root_attrs
    from recordkit.format.checksums import CHECKSUM_DTYPE, crc32c, identity_crc
    from recordkit.format.layout import HEADER_CRC_ATTR, HEADER_CRC_FIELDS
    from recordkit.runfile import new_run_id

    templates, folder, start, stop = args
    base = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
    for i in range(start, stop):
        template = templates[i % len(templates)]
        summary, values = _template_data(template)
        created = base + _dt.timedelta(seconds=i)
        run_id = new_run_id(created)
        fields = {"run_id": run_id, "name": f"run{i}", "created": created.isoformat(),
                  "ended": (created + _dt.timedelta(minutes=5)).isoformat()}
        now = np.array([identity_crc({**values, **fields}[key]) for key in HEADER_CRC_FIELDS],
                       CHECKSUM_DTYPE)
        entries = np.concatenate([now, now]).astype(CHECKSUM_DTYPE)
        crcs = np.append(entries, np.array([crc32c(entries.tobytes())], CHECKSUM_DTYPE))
        body = dumps_json({**summary, "fields": {**summary["fields"], **fields}})  # type: ignore[dict-item]
        digest = hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest()
        partial = Path(folder) / f".{run_id}.h5.part"
        shutil.copyfile(template, partial)
        os.chmod(partial, 0o644)
        with h5py.File(partial, "r+", locking=False) as f:
            write_root_attrs(f, fields)
            f.attrs.modify(HEADER_CRC_ATTR, crcs)
            f.attrs.modify("summary", f'{body[:-1]}, "sha256": "{digest}"}}')
        os.chmod(partial, 0o444)
        os.replace(partial, Path(folder) / f"{run_id}.h5")
    return stop - start


def build(directory: Path, runs: int, procs: int) -> Path:
    """``directory/records`` holding *runs* closed records in ``sweep`` (built or reused)."""
    root = directory / "records"
    folder = root / "sweep"
    have = len(list(folder.glob("*.h5"))) if folder.is_dir() else 0
    if have == runs:
        print(f"reusing {have} records in {folder}")
        return root
    if have:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    templates = [str(p) for p in _templates(directory / "templates")]
    step = 500
    jobs = [(templates, str(folder), a, min(a + step, runs)) for a in range(0, runs, step)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        done = 0
        for n in pool.imap_unordered(_copy_range, jobs):
            done += n
            if done % 10000 < step:
                print(f"  built {done}/{runs} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
    print(f"built {runs} records in {time.perf_counter() - start:.0f} s")
    return root


def sample(directory: Path, files: list[Path], runs: int) -> Path:
    """``directory/cold/sweep`` holding hard links to the first *runs* of *files*."""
    root = directory / "cold"
    folder = root / "sweep"
    if folder.is_dir() and len(list(folder.glob("*.h5"))) == runs:
        return root
    shutil.rmtree(root, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in files[:runs]:
        os.link(path, folder / path.name)
    return root


def drop_page_cache(files: list[Path]) -> None:
    """Drop every file's pages (clean ones: after sync) from the page cache."""
    os.sync()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_pages(files: list[Path]) -> str:
    """What ``fincore`` says of a sample of the files (resident pages), or why not."""
    if shutil.which("fincore") is None:
        return "fincore not installed"
    sample = [str(p) for p in files[:: max(1, len(files) // 200)]]
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *sample],
                          capture_output=True, text=True, check=False)
    resident = sum(int(line.split()[0]) for line in done.stdout.split() if line.strip())
    return f"{resident} bytes resident in {len(sample)} sampled files"


def cpu_seconds() -> float:
    """CPU time of this process and of its children waited for (the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the machine so far (``/proc/stat``), or (0, 0)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle, iowait
    return sum(values) - idle, sum(values)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    cpu = cpu_seconds()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def stat_all(files: list[Path]) -> None:
    for path in files:
        os.stat(path)


def h5py_summaries(files: list[Path]) -> None:
    import h5py

    for path in files:
        with h5py.File(path, "r", locking=False) as f:
            json.loads(f.attrs["summary"].rsplit(', "sha256"', 1)[0] + "}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where the records are built (kept)")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2, help="pairs of each figure")
    parser.add_argument("--procs", type=int, default=2, help="processes building records")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="the header cache folder to use and keep (filling the cache "
                        "of 100,000 runs reads every file once)")
    parser.add_argument("--cold-runs", type=int, default=0,
                        help="read this many of the runs (hard links in DIR/cold) for the "
                        "cold and page-cache figures; default all")
    args = parser.parse_args()

    root = build(args.directory, args.runs, args.procs)
    import recordkit as rk
    from recordkit.paths import record_files
    from recordkit.runindex import INDEX_FILE

    files = record_files(root, "sweep")
    assert len(files) == args.runs, len(files)
    cold_runs = min(args.cold_runs or args.runs, args.runs)
    cold_root = root if cold_runs == args.runs else sample(args.directory, files, cold_runs)
    cold_files = record_files(cold_root, "sweep")
    cache_home = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench-load-all-cache-"))
    os.environ["RECORDKIT_CACHE_DIR"] = str(cache_home)

    def load(**kwargs: object) -> None:
        rs = rk.load_all(root, experiment="sweep", **kwargs)  # type: ignore[arg-type]
        assert len(rs) == args.runs and not rs.skipped

    def load_cold(**kwargs: object) -> None:
        rs = rk.load_all(cold_root, experiment="sweep", cache=False,
                         **kwargs)  # type: ignore[arg-type]
        assert len(rs) == cold_runs and not rs.skipped

    index_file = cold_files[0].parent / INDEX_FILE
    start = time.perf_counter()
    load_cold()  # writes (or completes) the run index of the cold folder
    print(f"run index of {cold_runs} runs written (or checked) in "
          f"{time.perf_counter() - start:.1f} s: {index_file.stat().st_size} bytes",
          flush=True)

    start = time.perf_counter()
    rk.load_all(root, experiment="sweep", workers=2).close()  # fills the header cache
    print(f"header cache filled (or checked) in {time.perf_counter() - start:.1f} s",
          flush=True)
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    busy0 = busy_ticks()

    def run(name: str, fn: Callable[[], object], cold: bool = False) -> None:
        if cold:
            drop_page_cache([*cold_files, index_file])
        wall, used = timed(fn)
        results.setdefault(name, []).append(wall)
        cpu.setdefault(name, []).append(used)

    print(f"{args.runs} runs (warm figures), {cold_runs} (cold and page-cache figures); "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; page cache after "
          "a drop: ", end="")
    drop_page_cache(cold_files)
    print(cached_pages(cold_files), flush=True)
    for rep in range(args.repeat):
        warm = [("warm: load_all, header cache", lambda: load()),
                ("warm: os.stat of each file", lambda: stat_all(files))]
        cold = [("cold: load_all(cache=False), run index", lambda: load_cold()),
                ("cold: load_all(cache=False, workers=1)", lambda: load_cold(index=False)),
                ("cold: load_all(cache=False, workers=2)",
                 lambda: load_cold(index=False, workers=2)),
                ("cold: plain h5py summary of each file", lambda: h5py_summaries(cold_files))]
        pages = [("page cache warm: load_all(cache=False, workers=1)",
                  lambda: load_cold(index=False)),
                 ("page cache warm: load_all(cache=False, workers=2)",
                  lambda: load_cold(index=False, workers=2)),
                 ("page cache warm: plain h5py summary of each file",
                  lambda: h5py_summaries(cold_files))]
        order = 1 if rep % 2 == 0 else -1  # alternate the order within each pair
        for name, fn in warm[::order]:
            run(name, fn)
        for name, fn in cold[::order]:
            run(name, fn, cold=True)
        for name, fn in pages[::order]:
            h5py_summaries(cold_files)  # the page cache holds every file
            run(name, fn)
        print(f"  pass {rep + 1}: " + ", ".join(
            f"{name.split(': ', 1)[1]} {times[-1]:.2f} s" for name, times in results.items()),
            flush=True)

    def best(name: str) -> float:
        return min(results[name])

    busy1 = busy_ticks()
    total = busy1[1] - busy0[1]
    busy = f"{100 * (busy1[0] - busy0[0]) / total:.0f}%" if total else "unknown"
    print(f"\n{'figure':<62} {'best s':>8} {'median s':>9} {'per run':>9} {'CPU s':>7}")
    for name, times in results.items():
        n = args.runs if name.startswith("warm") else cold_runs
        print(f"{name:<62} {min(times):8.2f} {statistics.median(times):9.2f} "
              f"{1e3 * min(times) / n:7.3f} ms {statistics.median(cpu[name]):7.2f}")
    print(f"\nthe CPUs were busy {busy} of the time during the passes; load average "
          f"{os.getloadavg()[0]:.1f}")
    warm_s = best("warm: load_all, header cache")
    stat_s = best("warm: os.stat of each file")
    print(f"\nwarm: {warm_s:.2f} s (target <= {WARM_TARGET:g} s): "
          f"{warm_s / stat_s:.1f}x os.stat of each file ({stat_s:.2f} s)")
    indexed = best("cold: load_all(cache=False), run index")
    plain = best("cold: plain h5py summary of each file")
    print(f"cold, run index: {1e3 * indexed / cold_runs:.3f} ms a run (target <= 1 ms); "
          f"{indexed / plain:.2f} of plain h5py ({1e3 * plain / cold_runs:.3f} ms a run)")
    for where in ("cold", "page cache warm"):

        def cpu_of(workers: int, where: str = where) -> float:
            return statistics.median(cpu[f"{where}: load_all(cache=False, workers={workers})"])

        one = best(f"{where}: load_all(cache=False, workers=1)")
        two = best(f"{where}: load_all(cache=False, workers=2)")
        plain = best(f"{where}: plain h5py summary of each file")
        print(f"{where}: workers=1 {1e3 * one / cold_runs:.3f} ms a run, workers=2 "
              f"{1e3 * two / cold_runs:.3f} ms a run (target <= 1 ms when cold); "
              f"speed-up 1 -> 2 workers {one / two:.2f}x; workers=1 / plain h5py "
              f"{one / plain:.2f} (plain h5py {1e3 * plain / cold_runs:.3f} ms a run); "
              f"CPU s workers=1 {cpu_of(1):.2f}, workers=2 {cpu_of(2):.2f}")
    if args.cache_dir is None:
        shutil.rmtree(cache_home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
