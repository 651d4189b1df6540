"""Benchmark: ``mlmon metrics --by day`` over 90 days of a 10-million-row log vs plain DuckDB.

The baseline, measured in the same run, is what the design budget names: plain DuckDB computing
count and accuracy (avg of correct) per day with the label join, no mlmon. Both are timed as a
query inside this process and as a whole Python process (import + open + query + print), and the
ratios printed. Two in-process breakdowns say where mlmon's time goes: the log view alone (the
same per-day count through mlmon's view, i.e. its label join with de-duplication) and
``compute_metrics``. Each measurement runs ``--repeat`` times, interleaved, and the best is kept,
because on a shared machine the load swings more than the differences being measured.

Usage: ``python bench/bench_metrics.py [--rows N] [--days D] [--out DIR]``. The log is generated
with ``bench.gen_log.make_log`` into ``bench/out/log`` unless one of that size is already there.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gen_log import START, log_exists, make_log  # noqa: E402
from mlmon_core import sql  # noqa: E402

BASELINE = """
SELECT date_trunc('day', p."timestamp") AS day, count(*) AS rows,
       avg(CAST(l.target = p.prediction AS INTEGER)) AS accuracy
FROM read_parquet({predictions}) AS p LEFT JOIN read_parquet({labels}) AS l ON p.id = l.id
WHERE p."timestamp" >= {start} AND p."timestamp" < {end}
GROUP BY 1
"""

VIEW_ONLY = """
SELECT date_trunc('day', {ts}) AS day, count(*) AS rows, count({target}) AS labeled
FROM {log} WHERE {where} GROUP BY 1
"""

# The baseline as its own process: the smallest script a person would write for the same numbers.
BASELINE_SCRIPT = """
import sys, duckdb
con = duckdb.connect()
rows = con.execute(sys.argv[1], [sys.argv[2], sys.argv[3]]).fetchall()
print(len(rows))
"""


def baseline_query(folder: Path) -> sql.Fragment:
    """The baseline statement with the window bound as parameters."""
    return sql.render(BASELINE, predictions=sql.string_literal(str(folder / "predictions.parquet")),
                      labels=sql.string_literal(str(folder / "labels.parquet")),
                      start=sql.Fragment("CAST(? AS TIMESTAMP)"),
                      end=sql.Fragment("CAST(? AS TIMESTAMP)"))


def timed(action) -> tuple[float, object]:
    """Seconds taken by ``action()`` and what it returned."""
    began = time.perf_counter()
    value = action()
    return time.perf_counter() - began, value


def run(rows: int, days: int, out: Path, repeat: int = 2) -> dict[str, float]:
    """Generate (or reuse) the log, time everything ``repeat`` times (keeping the best) and print."""
    import duckdb

    from mlmon_core.metrics import compute_metrics
    from mlmon_core.source import open_config

    if log_exists(out, rows, days):
        print(f"reusing {rows:,}-row log in {out}")
    else:
        seconds, _ = timed(lambda: make_log(out, rows, days, seed=0))
        print(f"generated {rows:,} rows x 26 columns in {seconds:.1f} s ({out})")
    config = out / "mlmon.toml"
    start, end = START, START + timedelta(days=days)
    window_text = f"{start.date().isoformat()}..{end.date().isoformat()}"
    bounds = [start.isoformat(sep=" "), end.isoformat(sep=" ")]
    query = baseline_query(out)
    mlmon = str(Path(sys.executable).parent / "mlmon")
    command = [mlmon, "metrics", "--config", str(config), "--window", window_text, "--by", "day",
               "--json"]
    view = open_config(config)
    window = sql.parse_window(window_text)
    view_query = sql.render(VIEW_ONLY, ts=sql.Ident(view.roles.timestamp),
                            target=sql.Ident(view.roles.target), log=view.relation,
                            where=view.where(window, ()))

    def baseline_in_process():
        con = duckdb.connect()
        try:
            return con.execute(query.text, bounds).fetchall()
        finally:
            con.close()

    steps = {
        "baseline_query": baseline_in_process,
        "baseline_process": lambda: subprocess.run(
            [sys.executable, "-c", BASELINE_SCRIPT, query.text, *bounds],
            check=True, capture_output=True),
        "mlmon_process": lambda: subprocess.run(command, check=True, capture_output=True),
        "view_count": lambda: view.fetchall(view_query),
        "compute_metrics": lambda: compute_metrics(view, window, (), bucket="day"),
    }
    best: dict[str, float] = {}
    outputs: dict[str, object] = {}
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores); best of {repeat} runs each")
    for _ in range(repeat):
        for name, action in steps.items():
            seconds, outputs[name] = timed(action)
            best[name] = min(best.get(name, math.inf), seconds)
    print(f"load average after:  {os.getloadavg()[0]:.1f}")
    metrics = outputs["compute_metrics"]
    print(f"baseline DuckDB query (count + accuracy by day, label join): "
          f"{best['baseline_query']:.2f} s, {len(outputs['baseline_query'])} days")
    print(f"baseline as a Python process:                              "
          f"{best['baseline_process']:.2f} s")
    print(f"mlmon metrics --by day --json (whole process):             "
          f"{best['mlmon_process']:.2f} s, {len(outputs['mlmon_process'].stdout):,} bytes")
    print(f"  count by day through mlmon's log view (in process):      {best['view_count']:.2f} s")
    print(f"  compute_metrics(bucket='day') (in process):              "
          f"{best['compute_metrics']:.2f} s (AUC {metrics.metrics['roc_auc'].value:.4f}, "
          f"{len(metrics.buckets)} buckets)")
    print(f"ratio mlmon process / baseline process:  "
          f"{best['mlmon_process'] / best['baseline_process']:.1f}x")
    print(f"ratio compute_metrics / baseline query:  "
          f"{best['compute_metrics'] / best['baseline_query']:.1f}x")
    print(f"ratio compute_metrics / view-only count: "
          f"{best['compute_metrics'] / best['view_count']:.1f}x")
    return best


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="time mlmon metrics against plain DuckDB")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "log"))
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    options = parser.parse_args()
    print(f"{datetime.now():%Y-%m-%d %H:%M}, {options.rows:,} rows over {options.days} days")
    run(options.rows, options.days, Path(options.out), options.repeat)


if __name__ == "__main__":
    main()
