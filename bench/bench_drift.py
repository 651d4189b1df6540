"""Drift over every column: mlmon (DuckDB aggregates) against pandas + scipy on in-memory frames.

Both sides run the same tests (Evidently's default choice: Wasserstein / reference std for
many-valued numerical columns, Jensen–Shannon for the rest, the reference holding > 1000 rows) on
the same log written by ``bench/gen_log.py`` (predictions + late labels joined on id). The first
half of the period is the reference, the second half the current window. Each side runs in its own
subprocess, started by a small wrapper that reads the peak memory of its one child with
``resource.getrusage(RUSAGE_CHILDREN)``; the wall time covers the whole child (interpreter start,
imports, loading, tests). The results are compared column by column.

    .venv/bin/python bench/bench_drift.py [--rows 3000000] [--days 30] [--out bench/out/drift]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _windows(days: int) -> tuple[str, str]:
    from datetime import datetime, timedelta

    start = datetime(2024, 1, 1)
    middle = start + timedelta(days=days // 2)
    end = start + timedelta(days=days)
    return f"{start:%Y-%m-%d}..{middle:%Y-%m-%d}", f"{middle:%Y-%m-%d}..{end:%Y-%m-%d}"


def run_mlmon(config: str, days: int) -> dict[str, float | None]:
    """mlmon's drift over every column, as the CLI would compute it."""
    from mlmon_core import sql
    from mlmon_core.drift import compute_drift
    from mlmon_core.source import open_config

    reference, current = _windows(days)
    view = open_config(config)
    result = compute_drift(view, sql.parse_window(current), sql.parse_window(reference))
    return {c.column: c.statistic for c in result.columns}


def run_pandas(config: str, days: int) -> dict[str, float | None]:
    """The same tests on pandas frames with scipy, the way a notebook would do them."""
    import numpy as np
    import pandas as pd
    from scipy import stats
    from scipy.spatial import distance

    folder = Path(config).parent
    predictions = pd.read_parquet(folder / "predictions.parquet")
    labels = pd.read_parquet(folder / "labels.parquet")
    labels = labels.sort_values("labeled_at").drop_duplicates("id", keep="last")
    log = predictions.merge(labels[["id", "target"]], on="id", how="left")
    reference_text, current_text = _windows(days)
    bounds = [pd.Timestamp(t) for t in reference_text.split("..") + current_text.split("..")[1:]]
    reference = log[(log["timestamp"] >= bounds[0]) & (log["timestamp"] < bounds[1])]
    current = log[(log["timestamp"] >= bounds[1]) & (log["timestamp"] < bounds[2])]
    numerical = [c for c in log.columns if c.startswith(("f_num", "f_int"))] + ["score"]
    categorical = [c for c in log.columns if c.startswith("f_cat")] + ["prediction", "target"]
    out = {}
    for column in numerical + categorical:
        ref = reference[column].replace([np.inf, -np.inf], np.nan).dropna()
        cur = current[column].replace([np.inf, -np.inf], np.nan).dropna()
        if column in numerical and pd.concat([ref, cur]).nunique() > 5:
            out[column] = stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)
        else:
            keys = list(set(ref.unique()) | set(cur.unique()))
            ref_counts, cur_counts = ref.value_counts(), cur.value_counts()
            out[column] = distance.jensenshannon(
                np.array([ref_counts.get(k, 0) for k in keys]) / len(ref),
                np.array([cur_counts.get(k, 0) for k in keys]) / len(cur), 2)
    return {k: float(v) for k, v in out.items()}


def worker(side: str, config: str, days: int) -> None:
    """Run one side and print its results and its own inside time as JSON."""
    began = time.perf_counter()
    results = run_mlmon(config, days) if side == "mlmon" else run_pandas(config, days)
    print(json.dumps({"results": results, "inside_seconds": time.perf_counter() - began}))


def measure(side: str, config: str, days: int) -> None:
    """Wrapper: start the worker as this process's only child; report its wall time and peak RSS."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", side, "--config", config,
                           "--days", str(days)], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    payload.update(wall_seconds=wall, peak_mb=usage.ru_maxrss / 1024,
                   cpu_seconds=usage.ru_utime + usage.ru_stime)
    print(json.dumps(payload))


def _spawn_measure(side: str, config: str, days: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", side, "--config", config,
                           "--days", str(days)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "drift"))
    parser.add_argument("--worker", choices=("mlmon", "pandas"))
    parser.add_argument("--measure", choices=("mlmon", "pandas"))
    parser.add_argument("--config")
    options = parser.parse_args()
    if options.worker:
        return worker(options.worker, options.config, options.days)
    if options.measure:
        return measure(options.measure, options.config, options.days)

    from bench.gen_log import log_exists, make_log

    folder = Path(options.out)
    if not log_exists(folder, options.rows):
        began = time.perf_counter()
        make_log(folder, options.rows, options.days, seed=0)
        print(f"generated {options.rows:,} rows in {time.perf_counter() - began:.1f} s")
    config = str(folder / "mlmon.toml")
    mlmon = _spawn_measure("mlmon", config, options.days)
    baseline = _spawn_measure("pandas", config, options.days)
    worst = 0.0
    for column, expected in baseline["results"].items():
        actual = mlmon["results"].get(column)
        if actual is None or expected is None:
            continue
        worst = max(worst, abs(actual - expected) / max(abs(expected), 1e-300))
    reference, current = _windows(options.days)
    print(f"drift over {len(baseline['results'])} columns, {options.rows:,} rows "
          f"(reference {reference}, current {current})")
    print(f"{'':22}{'wall s':>9}{'inside s':>10}{'cpu s':>9}{'peak MB':>9}")
    for name, run in (("mlmon (DuckDB)", mlmon), ("pandas + scipy", baseline)):
        print(f"{name:22}{run['wall_seconds']:9.2f}{run['inside_seconds']:10.2f}"
              f"{run['cpu_seconds']:9.2f}{run['peak_mb']:9.0f}")
    print(f"speed-up (wall): {baseline['wall_seconds'] / mlmon['wall_seconds']:.1f}x, "
          f"(cpu): {baseline['cpu_seconds'] / mlmon['cpu_seconds']:.1f}x; "
          f"memory: {mlmon['peak_mb'] / baseline['peak_mb']:.0%} of the baseline")
    print(f"largest relative difference between the two: {worst:.2e}")


if __name__ == "__main__":
    main()
