"""Benchmark event validation against a plain ``pandas.read_csv`` of the same file.

Writes a synthetic header-less CSV in the Taobao UserBehavior layout
(``user_id,item_id,category_id,behavior,ts`` with epoch seconds; 0.1% of rows carry an unknown
behavior so the quarantine path runs), then times, each in a fresh child process:

- ``validate_events`` with ``ReadOptions.taobao()`` (read, normalise, quarantine, dedup, sort, write);
- ``pandas.read_csv`` of the same file (the same-run baseline: parsing only).

Prints a Markdown table (header and one row): rows, CSV size, wall and CPU seconds, rows/s and peak
RSS of each, and the ratios validate / read_csv (CPU time is less sensitive to other load on the
machine than wall time).

Usage: ``python benchmarks/bench_validate.py --rows 10000000 [--workdir DIR] [--no-header]``
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

START = 1511539200  # 2017-11-25T00:00:00Z
SPAN = 9 * 86400
BEHAVIORS = np.array(["pv", "fav", "cart", "buy", "like"])
BEHAVIOR_P = np.array([0.8945, 0.03, 0.05, 0.0245, 0.001])


def write_synthetic_csv(path: Path, rows: int, seed: int = 7, chunk: int = 2_000_000) -> None:
    """Write ``rows`` synthetic Taobao-format rows (no header) to ``path`` in chunks."""
    rng = np.random.default_rng(seed)
    users = max(rows // 100, 1)
    options = pacsv.WriteOptions(include_header=False)
    with path.open("wb") as fh:
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            table = pa.table(
                {
                    "user_id": rng.integers(1, users + 1, n),
                    "item_id": rng.integers(1, 5_000_000, n),
                    "category_id": rng.integers(1, 10_000, n),
                    "behavior": BEHAVIORS[rng.choice(len(BEHAVIORS), n, p=BEHAVIOR_P)],
                    "ts": START + rng.integers(0, SPAN, n),
                }
            )
            pacsv.write_csv(table, fh, write_options=options)
            done += n


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (robust to other load on the machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_validate(csv: Path, workdir: Path) -> dict[str, float]:
    from features.events.validate import ReadOptions, ValidationConfig, validate_events

    t0, c0 = time.perf_counter(), _cpu_seconds()
    report = validate_events(
        csv,
        workdir / "out",
        ValidationConfig(max_bad_share=0.01),
        ReadOptions.taobao(),
        now=datetime(2017, 12, 4, tzinfo=UTC),
    )
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return {
        "seconds": seconds,
        "cpu": cpu,
        "rss_mb": _peak_rss_mb(),
        "rows_in": report.rows_in,
        "accepted": report.accepted,
        "quarantined": report.quarantined,
        "duplicates": report.duplicates,
    }


def _child_pandas(csv: Path) -> dict[str, float]:
    import pandas as pd

    t0, c0 = time.perf_counter(), _cpu_seconds()
    frame = pd.read_csv(csv, header=None, names=["user_id", "item_id", "category_id", "behavior", "ts"])
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return {"seconds": seconds, "cpu": cpu, "rss_mb": _peak_rss_mb(), "rows": len(frame)}


def _run_child(phase: str, csv: Path, workdir: Path) -> dict[str, float]:
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--csv", str(csv), "--workdir", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=repo,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the CSV (temp dir)")
    parser.add_argument("--no-header", action="store_true", help="print only the table row")
    parser.add_argument("--phase", choices=["validate", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase == "validate":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        print(json.dumps(_child_validate(args.csv, args.workdir)))
        return
    if args.phase == "pandas":
        print(json.dumps(_child_pandas(args.csv)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench-validate-", dir=args.workdir))
    try:
        csv = workdir / "events.csv"
        t0 = time.perf_counter()
        write_synthetic_csv(csv, args.rows)
        gen_s = time.perf_counter() - t0
        size_mb = csv.stat().st_size / 1e6
        print(f"wrote {args.rows:,} rows ({size_mb:,.0f} MB) in {gen_s:.1f} s", file=sys.stderr)
        val = _run_child("validate", csv, workdir)
        base = _run_child("pandas", csv, workdir)
        print(f"validation counts: {val}", file=sys.stderr)
        rows = int(val["rows_in"])
        if not args.no_header:
            print(
                "| rows | CSV MB | validate s (CPU s) | validate rows/s | validate peak RSS MB "
                "| pandas.read_csv s (CPU s) | read_csv peak RSS MB | ratio wall (CPU) |"
            )
            print("|---|---|---|---|---|---|---|---|")
        print(
            f"| {rows:,} | {size_mb:,.0f} | {val['seconds']:.1f} ({val['cpu']:.1f}) "
            f"| {rows / val['seconds']:,.0f} | {val['rss_mb']:,.0f} "
            f"| {base['seconds']:.1f} ({base['cpu']:.1f}) | {base['rss_mb']:,.0f} "
            f"| {val['seconds'] / base['seconds']:.2f} ({val['cpu'] / base['cpu']:.2f}) |"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
