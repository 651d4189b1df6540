"""Benchmark: the Overview's aggregates over a 10-million-row log vs plain DuckDB.

What the Overview asks on every page view: the log opened (files listed, labels de-duplicated,
roles and kinds inferred) and the per-day traffic aggregates (rows, labeled rows, class balance,
mean score, prediction distribution) for the whole log. The baseline, measured in the same run,
is plain DuckDB on the same Parquet files: rows, labeled rows and positive rates per day with the
label join. Both run ``--repeat`` times, interleaved; the best of each is kept, since the shared
machine's load swings more than the differences measured. Printed: seconds and the ratio.

Usage: ``python bench/bench_overview.py [--rows N] [--days D] [--out DIR] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from bench.gen_log import log_exists, make_log  # noqa: E402
from mlmon_core import sql  # noqa: E402
from mlmon_core.config import Window  # noqa: E402

BASELINE = """
SELECT date_trunc('day', p."timestamp"), count(*), count(l.target),
       avg(CAST(l.target = 1 AS INTEGER)), avg(CAST(p.prediction = 1 AS INTEGER)), avg(p.score)
FROM read_parquet({predictions}) AS p LEFT JOIN read_parquet({labels}) AS l ON p.id = l.id
GROUP BY 1
"""


def baseline(folder: Path) -> float:
    """Seconds for plain DuckDB's per-day aggregates with the label join."""
    started = time.perf_counter()
    con = duckdb.connect()
    query = sql.render(BASELINE, predictions=sql.string_literal(str(folder / "predictions.parquet")),
                       labels=sql.string_literal(str(folder / "labels.parquet")))
    con.execute(query.text).fetchall()
    return time.perf_counter() - started


def mlmon_overview(folder: Path) -> tuple[float, float]:
    """Seconds to open the log, and to compute the Overview's traffic aggregates."""
    from mlmon_core.overview import traffic
    from mlmon_core.source import open_config

    started = time.perf_counter()
    view = open_config(folder / "mlmon.toml")
    opened = time.perf_counter()
    traffic(view, Window(None, None), bucket="day")
    return opened - started, time.perf_counter() - opened


def main() -> None:
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "log"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = Path(args.out)
    if not log_exists(folder, args.rows, args.days):
        print(f"generating {args.rows:,} rows into {folder} …", flush=True)
        make_log(folder, rows=args.rows, days=args.days)
    base, opens, aggregates = [], [], []
    for _ in range(args.repeat):
        base.append(baseline(folder))
        opened, aggregated = mlmon_overview(folder)
        opens.append(opened)
        aggregates.append(aggregated)
    best_base, best_open, best_agg = min(base), min(opens), min(aggregates)
    print(f"rows: {args.rows:,}, days: {args.days}")
    print(f"plain DuckDB per-day aggregates with label join: {best_base:.2f} s")
    print(f"mlmon open (list files, de-duplicate labels, infer roles): {best_open:.2f} s")
    print(f"mlmon Overview traffic aggregates:                 {best_agg:.2f} s "
          f"({best_agg / best_base:.1f}x the baseline)")
    print(f"mlmon open + aggregates:                           {best_open + best_agg:.2f} s "
          f"({(best_open + best_agg) / best_base:.1f}x the baseline)")


if __name__ == "__main__":
    main()
