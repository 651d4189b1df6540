"""A synthetic binary-classification prediction log for benchmarks, generated inside DuckDB.

``make_log(out_dir, rows, days, seed)`` writes ``predictions.parquet`` (26 columns: id, timestamp,
12 numerical and 5 categorical features, 2 integer features, model, variant, latency, prediction,
score), ``labels.parquet`` (id, target, labeled_at; most rows older than two days are labeled,
few of the newest) and an ``mlmon.toml`` pointing at both, and returns the toml's path.

Every random number is a hash of (row number, seed, stream), so the output depends only on the
arguments, not on thread scheduling, and 10 million rows take seconds. Realism that benchmarks
care about: scores are unrounded doubles (so nearly every score is distinct, the worst case for
exact ranking metrics), the positive rate is about 15 %, a feature drifts and the model's quality
drops in the last third of the period, and a second model version starts halfway.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlmon_core import sql  # noqa: E402

START = datetime(2024, 1, 1)

# u(i, k): a uniform number in [0, 1) for row i and stream k; z(i, k): a standard normal one.
_MACROS = (
    "CREATE OR REPLACE TEMP MACRO u(i, k) AS "
    "CAST(hash(i, {seed}, k) >> 11 AS DOUBLE) / 9007199254740992.0",
    "CREATE OR REPLACE TEMP MACRO z(i, k) AS "
    "sqrt(-2 * ln(1 - u(i, k))) * cos(2 * pi() * u(i, k + 1000))",
)

_GENERATED = """
CREATE OR REPLACE TEMP VIEW generated AS
WITH base AS (
    SELECT i,
           {start} + to_microseconds(CAST(i * {step_us} + u(i, 1) * {step_us} AS BIGINT)) AS ts,
           CAST(i * {days} AS DOUBLE) / {rows} AS day
    FROM range({rows}) AS r(i)
), features AS (
    SELECT i, ts, day,
        z(i, 10) + CASE WHEN day > {drift_day} THEN 0.8 ELSE 0 END AS f_num_0,
        z(i, 11) AS f_num_1, z(i, 12) * 2 + 1 AS f_num_2, exp(z(i, 13)) AS f_num_3,
        z(i, 14) AS f_num_4, z(i, 15) AS f_num_5, u(i, 16) * 100 AS f_num_6,
        CASE WHEN u(i, 17) < 0.02 THEN NULL ELSE z(i, 18) END AS f_num_7,
        z(i, 19) AS f_num_8, z(i, 20) AS f_num_9, u(i, 21) AS f_num_10,
        CASE WHEN u(i, 22) < 0.05 THEN NULL ELSE z(i, 23) * 10 END AS f_num_11,
        list_element(['north', 'south', 'east', 'west'], 1 + CAST(floor(u(i, 30) * 4) AS INTEGER))
            AS f_cat_0,
        list_element(['web', 'ios', 'android'], 1 + CAST(floor(u(i, 31) * 3) AS INTEGER)) AS f_cat_1,
        'segment_' || CAST(CAST(floor(u(i, 32) * 20) AS INTEGER) AS VARCHAR) AS f_cat_2,
        list_element(['a', 'b'], 1 + CAST(floor(u(i, 33) * 2) AS INTEGER)) AS f_cat_3,
        CASE WHEN u(i, 34) < 0.03 THEN NULL
             ELSE list_element(['x', 'y', 'z'], 1 + CAST(floor(u(i, 35) * 3) AS INTEGER)) END
            AS f_cat_4,
        CAST(floor(u(i, 40) * 60) AS INTEGER) + 18 AS f_int_0,
        CAST(floor(-ln(1 - u(i, 41)) * 3) AS INTEGER) AS f_int_1
    FROM base
), scored AS (
    SELECT *,
        -2.2 + 0.9 * f_num_0 - 0.7 * f_num_1 + 0.5 * f_num_4 + 0.3 * (f_cat_1 = 'web')::INTEGER
            + 0.4 * z(i, 50) AS model_logit,
        -2.2 + 0.9 * f_num_0 - 0.7 * f_num_1 + 0.5 * f_num_4 + 0.3 * (f_cat_1 = 'web')::INTEGER
            + CASE WHEN day > {drift_day} THEN 0.8 * f_num_5 - 0.6 * f_num_0 ELSE 0 END
            AS true_logit
    FROM features
)
SELECT i AS id, ts AS "timestamp",
       f_num_0, f_num_1, f_num_2, f_num_3, f_num_4, f_num_5, f_num_6, f_num_7, f_num_8, f_num_9,
       f_num_10, f_num_11, f_cat_0, f_cat_1, f_cat_2, f_cat_3, f_cat_4, f_int_0, f_int_1,
       CASE WHEN day < {version_day} THEN 'v1' ELSE 'v2' END AS model,
       CASE WHEN u(i, 60) < 0.5 THEN 'A' ELSE 'B' END AS variant,
       20 + 15 * exp(0.5 * z(i, 61)) AS latency_ms,
       CAST(model_logit >= 0 AS INTEGER) AS prediction,
       1 / (1 + exp(-model_logit)) AS score,
       CAST(u(i, 70) < 1 / (1 + exp(-true_logit)) AS INTEGER) AS target,
       ts + to_microseconds(CAST((1 + 3 * u(i, 71)) * 86400000000 AS BIGINT)) AS labeled_at,
       u(i, 72) < CASE WHEN day < {days} - 2 THEN 0.95 ELSE 0.3 END AS is_labeled
FROM scored
"""

_COPY_PREDICTIONS = ("COPY (SELECT * EXCLUDE (target, labeled_at, is_labeled) FROM generated) "
                     "TO {path} (FORMAT parquet)")
_COPY_LABELS = ("COPY (SELECT id, target, labeled_at FROM generated WHERE is_labeled) "
                "TO {path} (FORMAT parquet)")

_TOML = """[source]
predictions = "predictions.parquet"
labels = "labels.parquet"

[columns]
id = "id"
timestamp = "timestamp"
prediction = "prediction"
score = "score"
target = "target"
model = "model"
variant = "variant"
latency = "latency_ms"
label_timestamp = "labeled_at"

[model]
task = "binary"
positive_label = 1
"""


def make_log(out_dir: str | Path, rows: int = 10_000_000, days: int = 90, seed: int = 0) -> Path:
    """Write the synthetic log, its labels and an ``mlmon.toml`` into ``out_dir``; return the toml."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    for macro in _MACROS:
        con.execute(sql.render(macro, seed=int(seed)).text)
    step_us = days * 86_400_000_000 / rows
    start = sql.render("TIMESTAMP '2024-01-01 00:00:00'")
    con.execute(sql.render(_GENERATED, start=start, step_us=step_us, days=int(days),
                           rows=int(rows), drift_day=days * 2 // 3, version_day=days // 2).text)
    for template, name in ((_COPY_PREDICTIONS, "predictions.parquet"),
                           (_COPY_LABELS, "labels.parquet")):
        partial = folder / ("." + name)
        con.execute(sql.render(template, path=sql.string_literal(str(partial))).text)
        partial.replace(folder / name)
    config = folder / "mlmon.toml"
    config.write_text(_TOML)
    (folder / "gen_log.json").write_text(json.dumps({"rows": rows, "days": days, "seed": seed}))
    con.close()
    return config


def log_exists(out_dir: str | Path, rows: int, days: int | None = None,
               seed: int | None = None) -> bool:
    """Whether ``out_dir`` already holds a generated log of ``rows`` rows (to reuse it).

    ``days`` and ``seed``, when given, must match too (read from ``gen_log.json``).
    """
    folder = Path(out_dir)
    needed = [folder / "predictions.parquet", folder / "labels.parquet", folder / "mlmon.toml"]
    if not all(path.exists() for path in needed):
        return False
    meta_path = folder / "gen_log.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        wanted = {"rows": rows, "days": days, "seed": seed}
        return all(meta.get(key) == value for key, value in wanted.items() if value is not None)
    con = duckdb.connect()
    query = sql.render("SELECT count(*) FROM read_parquet({path})",
                       path=sql.string_literal(str(needed[0])))
    found = con.execute(query.text).fetchone()[0]
    con.close()
    return found == rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "log"))
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    began = time.perf_counter()
    path = make_log(options.out, options.rows, options.days, options.seed)
    print(f"wrote {options.rows:,} rows to {path.parent} in {time.perf_counter() - began:.1f} s")
