"""Drift over every column: mlmon (DuckDB aggregates) against pandas + scipy on in-memory frames.

Both sides run the same tests (Evidently's default choice: Wasserstein / reference std for
numerical columns with more than 5 values, Jensen–Shannon for the rest, the reference holding
> 1000 rows) on the same log, predictions joined with their latest label on id. The first half of
the period is the reference, the second half the current window. Two logs of about 3 million rows:

- ``synthetic`` (``bench/gen_log.py``, 22 drift columns): every numerical column an unrounded
  double, so almost every value is distinct: the worst case for exact ECDFs;
- ``demo`` (``mlmon demo --rows 3000000``, 18 drift columns): the sample loan log, whose numbers
  are what logs usually hold (ages, amounts in hundreds, rates, counts) beside one unrounded score.

Each side runs in its own subprocess, started by a small wrapper that reads the peak memory of its
one child with ``resource.getrusage(RUSAGE_CHILDREN)``; the wall time covers the whole child
(interpreter start, imports, loading, tests). The results are compared column by column.

    .venv/bin/python bench/bench_drift.py [--log synthetic|demo|both] [--rows 3000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
# Columns of the logs that are not drift columns (ids, times and serving metadata).
NOT_DRIFTED = ("id", "request_id", "timestamp", "model", "model_version", "variant", "latency_ms",
               "status", "labeled_at")


def _windows(start: datetime, days: int) -> tuple[str, str]:
    middle = start + timedelta(days=days // 2)
    end = start + timedelta(days=days)
    return f"{start:%Y-%m-%d}..{middle:%Y-%m-%d}", f"{middle:%Y-%m-%d}..{end:%Y-%m-%d}"


def run_mlmon(config: str, reference: str, current: str) -> dict[str, float | None]:
    """mlmon's drift over every column, as the CLI would compute it."""
    from mlmon_core import sql
    from mlmon_core.drift import compute_drift
    from mlmon_core.source import open_config

    view = open_config(config)
    result = compute_drift(view, sql.parse_window(current), sql.parse_window(reference))
    return {c.column: c.statistic for c in result.columns}


def _read_log(config: str):
    """Predictions with their latest label, the way a notebook would load them."""
    import tomllib

    import pandas as pd

    folder = Path(config).parent
    settings = tomllib.loads(Path(config).read_text())
    columns = settings.get("columns", {})
    target, labeled_at = columns.get("target", "target"), columns.get("label_timestamp", "labeled_at")
    predictions = pd.read_parquet(folder / settings["source"]["predictions"])
    labels = pd.read_parquet(folder / settings["source"]["labels"])
    labels = labels.sort_values(labeled_at).drop_duplicates("id", keep="last")
    return predictions.merge(labels[["id", target]], on="id", how="left")


def run_pandas(config: str, reference_text: str, current_text: str) -> dict[str, float | None]:
    """The same tests on pandas frames with scipy, the way a notebook would do them."""
    import numpy as np
    import pandas as pd
    from scipy import stats
    from scipy.spatial import distance

    log = _read_log(config)
    bounds = [pd.Timestamp(t) for t in reference_text.split("..") + current_text.split("..")[1:]]
    reference = log[(log["timestamp"] >= bounds[0]) & (log["timestamp"] < bounds[1])]
    current = log[(log["timestamp"] >= bounds[1]) & (log["timestamp"] < bounds[2])]
    out = {}
    for column in [c for c in log.columns if c not in NOT_DRIFTED]:
        ref = reference[column].replace([np.inf, -np.inf], np.nan).dropna()
        cur = current[column].replace([np.inf, -np.inf], np.nan).dropna()
        numerical = pd.api.types.is_numeric_dtype(ref) and not pd.api.types.is_bool_dtype(ref)
        if numerical and pd.concat([ref, cur]).nunique() > 5:
            out[column] = stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)
        else:
            keys = list(set(ref.unique()) | set(cur.unique()))
            ref_counts, cur_counts = ref.value_counts(), cur.value_counts()
            out[column] = distance.jensenshannon(
                np.array([ref_counts.get(k, 0) for k in keys]) / len(ref),
                np.array([cur_counts.get(k, 0) for k in keys]) / len(cur), 2)
    return {k: float(v) for k, v in out.items()}


def worker(side: str, config: str, reference: str, current: str) -> None:
    """Run one side and print its results and its own inside time as JSON."""
    began = time.perf_counter()
    run = run_mlmon if side == "mlmon" else run_pandas
    results = run(config, reference, current)
    print(json.dumps({"results": results, "inside_seconds": time.perf_counter() - began}))


def measure(arguments: list[str]) -> None:
    """Wrapper: start the worker as this process's only child; report its wall time and peak RSS."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", *arguments],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    payload.update(wall_seconds=wall, peak_mb=usage.ru_maxrss / 1024,
                   cpu_seconds=usage.ru_utime + usage.ru_stime)
    print(json.dumps(payload))


def _spawn_measure(arguments: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", *arguments],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _synthetic_log(rows: int) -> tuple[str, datetime, int]:
    from bench.gen_log import START, log_exists, make_log

    folder, days = OUT / "drift", 30
    if not log_exists(folder, rows, days=days, seed=0):
        began = time.perf_counter()
        make_log(folder, rows, days, seed=0)
        print(f"generated {rows:,} synthetic rows in {time.perf_counter() - began:.1f} s")
    return str(folder / "mlmon.toml"), START, days


def _demo_log(rows: int) -> tuple[str, datetime, int]:
    from mlmon_core import demo

    folder = OUT / f"drift_demo_{rows}"
    if not (folder / "mlmon.toml").exists():
        began = time.perf_counter()
        demo.generate(folder, rows=rows)
        print(f"generated the {rows:,}-row sample log in {time.perf_counter() - began:.1f} s")
    plan = demo.plan_for()
    return str(folder / "mlmon.toml"), datetime.combine(plan.date_of(0), datetime.min.time()), 90


def compare(name: str, config: str, start: datetime, days: int) -> None:
    """Run both sides on one log and print the table and the ratios."""
    reference, current = _windows(start, days)
    arguments = ["--config", config, "--reference", reference, "--current", current]
    mlmon = _spawn_measure(["mlmon", *arguments])
    baseline = _spawn_measure(["pandas", *arguments])
    worst = 0.0
    for column, expected in baseline["results"].items():
        actual = mlmon["results"].get(column)
        if actual is None or expected is None:
            continue
        worst = max(worst, abs(actual - expected) / max(abs(expected), 1e-300))
    print(f"{name} log: drift over {len(baseline['results'])} columns "
          f"(reference {reference}, current {current})")
    print(f"{'':22}{'wall s':>9}{'inside s':>10}{'cpu s':>9}{'peak MB':>9}")
    for side, run in (("mlmon (DuckDB)", mlmon), ("pandas + scipy", baseline)):
        print(f"{side:22}{run['wall_seconds']:9.2f}{run['inside_seconds']:10.2f}"
              f"{run['cpu_seconds']:9.2f}{run['peak_mb']:9.0f}")
    print(f"speed-up (wall): {baseline['wall_seconds'] / mlmon['wall_seconds']:.1f}x, "
          f"(cpu): {baseline['cpu_seconds'] / mlmon['cpu_seconds']:.1f}x; "
          f"memory: {mlmon['peak_mb'] / baseline['peak_mb']:.0%} of the baseline")
    print(f"largest relative difference between the two: {worst:.2e}")
    missing = sorted(set(baseline["results"]) - set(mlmon["results"]))
    if missing:
        print(f"columns mlmon did not test: {', '.join(missing)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", choices=("synthetic", "demo", "both"), default="both")
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--worker", choices=("mlmon", "pandas"))
    parser.add_argument("--measure", choices=("mlmon", "pandas"))
    parser.add_argument("--config")
    parser.add_argument("--reference")
    parser.add_argument("--current")
    options = parser.parse_args()
    if options.worker:
        return worker(options.worker, options.config, options.reference, options.current)
    if options.measure:
        return measure([options.measure, "--config", options.config,
                        "--reference", options.reference, "--current", options.current])
    if options.log in ("synthetic", "both"):
        compare("synthetic", *_synthetic_log(options.rows))
    if options.log in ("demo", "both"):
        compare("demo", *_demo_log(options.rows))


if __name__ == "__main__":
    main()
