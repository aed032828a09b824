"""The quick benchmark subset behind ``make bench``: every area at a small size, one Markdown summary at the end.

    .venv/bin/python benchmarks/run_quick.py [--only quality,batch] [--skip lookup] [--timeout 900]

Runs each benchmark script in its own process (so peak memory and imports are its own), in this order:

==========  ===================================================================  ==========================
step        command                                                              compares against
==========  ===================================================================  ==========================
validate    bench_validate.py --rows 1000000                                     pandas.read_csv
features    bench_features.py --events 2000000 --users 40000                     a pandas groupby
generate    bench_generate.py --users 20000                                      (throughput, peak RSS)
store       bench_store.py --users 200000 --repeats 1000                         encode only, raw SELECT/HMGET
lookup      bench_lookup.py --users 100000 --rates 100,500 --duration 10         bare uvicorn floor
quality     bench_quality.py --users 20000                                       rule score, logistic, oracle
batch       bench_batch.py --users 100000 --train-users 20000                    Booster.predict, tl2cgen
==========  ===================================================================  ==========================

``quality`` and ``batch`` share a fresh cache directory (the batch scores with the bundles the quality run
trained). The batch runs at 100k users, not 200k: its SHAP reason codes cost about 90 s per store at 200k on
this machine, which alone would take a third of the budget. A step that fails or times out is reported and the
others still run; the exit code is 1 when any failed. The training-time benchmark (``bench_training.py``) is not
in the quick subset: at a size where its breakdown means anything it takes longer than the whole budget (see
``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@dataclass
class Step:
    name: str
    args: list[str]
    rows: list[str] = field(default_factory=list)
    seconds: float = 0.0
    status: str = "not run"

    @property
    def command(self) -> str:
        """The command line to reproduce the step on its own (without the shared temporary cache)."""
        shown, skip = [], False
        for a in self.args:
            if skip or a == "--cache":
                skip = not skip
                continue
            shown.append(a)
        return "python benchmarks/" + " ".join(shown)


def steps(cache: Path) -> list[Step]:
    c = ["--cache", str(cache)]
    return [
        Step("validate", ["bench_validate.py", "--rows", "1000000"]),
        Step("features", ["bench_features.py", "--events", "2000000", "--users", "40000"]),
        Step("generate", ["bench_generate.py", "--users", "20000"]),
        Step("store", ["bench_store.py", "--users", "200000", "--repeats", "1000"]),
        Step("lookup", ["bench_lookup.py", "--users", "100000", "--rates", "100,500", "--duration", "10"]),
        Step("quality", ["bench_quality.py", "--users", "20000", *c]),
        Step("batch", ["bench_batch.py", "--users", "100000", "--train-users", "20000", *c]),
    ]


def markdown_lines(text: str) -> list[str]:
    """Table lines of a script's output, with a blank line between consecutive tables."""
    out: list[str] = []
    previous_was_table = False
    for line in text.splitlines():
        is_table = line.startswith("|")
        if is_table:
            if not previous_was_table and out:
                out.append("")
            out.append(line)
        previous_was_table = is_table
    return out


def features_rows(out_dir: Path) -> list[str]:
    """``bench_features.py`` prints key: value lines; its JSON holds the same numbers."""
    doc = json.loads((out_dir / "bench_features.json").read_text())
    head = "| events | users | build_features s | events/s | peak RSS MB | pandas s | speed-up vs pandas |"
    row = (f"| {doc['events']:,} | {doc['users']:,} | {doc['ibis_duckdb_seconds']} | {doc['ibis_events_per_s']:,} "
           f"| {doc['ibis_peak_rss_mb']} | {doc.get('pandas_seconds', 'n/a')} "
           f"| {doc.get('speedup_vs_pandas', 'n/a')}x |")
    return [head, "|---|---|---|---|---|---|---|", row]


def generate_rows(text: str) -> list[str]:
    """``bench_generate.py`` prints ``key=value`` lines; pick the numbers out."""
    def grab(pattern: str) -> str:
        found = re.search(pattern, text)
        return found.group(1) if found else "?"

    head = "| users | events | wall s (CPU s) | events/s | peak RSS MiB |"
    patterns = (r"users=(\d+)", r"events=(\d+)", r"elapsed=([\d.]+) s", r"cpu ([\d.]+) s", r"events/s=([\d,]+)",
                r"peak RSS=(\d+) MiB")
    users, events, wall, cpu, rate, rss = (grab(p) for p in patterns)
    row = f"| {users} | {events} | {wall} ({cpu}) | {rate} | {rss} |"
    return [head, "|---|---|---|---|---|", row]


def run_step(step: Step, timeout: float) -> None:
    print(f"\n## {step.name}: {step.command}", flush=True)
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(BENCH / step.args[0]), *step.args[1:]], check=False, cwd=ROOT,
                              text=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        step.seconds, step.status = time.perf_counter() - t0, f"timed out after {timeout:.0f} s"
        print(step.status, flush=True)
        return
    step.seconds = time.perf_counter() - t0
    if done.returncode != 0:
        step.status = f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
        print(step.status, flush=True)
        print(done.stderr[-2000:], file=sys.stderr)
        return
    if step.name == "features":
        step.rows = features_rows(BENCH / "out")
    elif step.name == "generate":
        step.rows = generate_rows(done.stdout)
    else:
        step.rows = markdown_lines(done.stdout)
    step.status = "ok"
    print("\n".join(step.rows), flush=True)
    print(f"({step.seconds:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated step names to leave out")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per step")
    args = ap.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quick-") as tmp:
        todo = [s for s in steps(Path(tmp)) if (not only or s.name in only) and s.name not in skip]
        for step in todo:
            run_step(step, args.timeout)
    total = time.perf_counter() - t0

    print(f"\n# Summary ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, total {total / 60:.1f} min)\n")
    print("| step | status | seconds |\n|---|---|---|")
    for step in todo:
        print(f"| {step.name} | {step.status} | {step.seconds:.0f} |")
    for step in todo:
        if step.rows:
            print(f"\n### {step.name}\n\n`{step.command}`\n")
            print("\n".join(step.rows))
    return 0 if all(s.status == "ok" for s in todo) else 1


if __name__ == "__main__":
    raise SystemExit(main())
