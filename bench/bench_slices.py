"""Benchmark: mlmon's slice finder against the ``sliceline`` package, on the same rows.

    .venv/bin/python bench/bench_slices.py [--rows 200000] [--skip-sliceline]

Data: a synthetic binary-classification log of ``--rows`` rows × 16 features (11 real-valued, one
of them with nulls, one integer, 4 categorical with balanced levels) with a planted weak segment,
written as Parquet with an mlmon.toml into ``bench/out/slices``. Balanced levels are a kindness to
sliceline: with skewed categorical levels its level-3 search needed 34–38 GiB at this size (its
``x_encoded @ slices.T`` holds a rows × candidates sparse matrix) and could not finish here.

Three measured runs, each in a fresh subprocess so that peak memory (``VmHWM``) belongs to the run
alone; the figure reported is the peak resident memory *above* the process's resident size just
before the work (after imports and after loading the input):

1. ``mlmon``: ``find_slices`` end to end with the defaults (reference-quantile bins, one-sided
   ranges, up to 3 conditions, 1 % support, every candidate tested, BH, ranking), starting from the
   Parquet file: the DuckDB queries are inside the timing. It also saves the integer-coded matrix
   and errors it read, for the other two runs.
2. ``mlmon-sliceline-mode``: mlmon's search on that coded matrix with SliceLine's own objective and
   candidate space (single codes only, top-K by score, score-bound pruning, no tests).
3. ``sliceline``: ``sliceline.Slicefinder`` on the same coded matrix and errors (same α, K, levels
   and minimum support). It runs in its own virtualenv, ``bench/out/.venv-sliceline``, created on
   first use (``pip install sliceline``): it is never a dependency of mlmon.

Printed: times, peak memory, the ratios sliceline / mlmon, and whether runs 2 and 3 found the same
best slices (same conditions and scores). Results also go to ``bench/out/slices/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "slices"
SLICELINE_VENV = HERE / "out" / ".venv-sliceline"   # bench/out/ is git-ignored
SLICELINE_VERSION = "0.3.0"
SLICELINE_MEMORY_CAP = 20 * 1024 ** 3      # the machine has 24 GiB; fail fast rather than thrash
ALPHA, TOP, MAX_LEVEL, SUPPORT = 0.95, 10, 3, 0.01


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _measure(work):
    """Run ``work()``; return its result, seconds, and peak RSS above the starting RSS (MiB)."""
    start_rss = _rss_kib("VmRSS")
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    return result, seconds, (_rss_kib("VmHWM") - start_rss) / 1024


# ---------------------------------------------------------------- data

def make_data(rows: int, kind: str, seed: int = 0) -> Path:
    """Write the benchmark log and its mlmon.toml; return the toml path (reused if present).

    ``mixed``: 11 real-valued features (one with nulls), one integer, 4 categorical; planted
    segment ``cat_2 = c2_1 and num_3 > 2``. ``numerical``: 16 real-valued features; planted segment
    ``num_12 < -3.5 and num_3 > 2``.
    """
    import numpy as np
    import pandas as pd

    folder = OUT / f"{kind}_{rows}"
    config = folder / "mlmon.toml"
    if config.exists():
        return config
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": np.arange(rows),
        "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.uniform(0, 28, rows), unit="D"),
    })
    numerical = 16 if kind == "numerical" else 10
    for i in range(numerical):
        frame[f"num_{i}"] = rng.normal(size=rows) * (i % 10 + 1)
    if kind == "mixed":
        frame["num_10"] = np.where(rng.random(rows) < 0.05, np.nan, rng.lognormal(3, 1, rows))
        frame["int_11"] = rng.integers(0, 100, rows)
        for i, k in enumerate([3, 4, 5, 6]):
            frame[f"cat_{i}"] = rng.choice([f"c{i}_{j}" for j in range(k)], rows)
        planted = (frame["cat_2"] == "c2_1") & (frame["num_3"] > 2.0)
        bump = frame["cat_1"] == "c1_0"
    else:
        planted = (frame["num_12"] < -3.5) & (frame["num_3"] > 2.0)
        bump = frame["num_5"] > 8.0
    truth = (rng.random(rows) < 0.25).astype(int)
    risk = 0.10 + 0.05 * (frame["num_0"] > 1.0) + 0.03 * bump
    risk = np.where(planted, 0.45, risk)
    wrong = rng.random(rows) < risk
    frame["prediction"] = np.where(wrong, 1 - truth, truth)
    frame["score"] = np.where(frame["prediction"] == 1, 0.5 + 0.5 * rng.random(rows),
                              0.5 * rng.random(rows))
    frame["target"] = truth
    frame.to_parquet(folder / "predictions.parquet", index=False)
    config.write_text('[source]\npredictions = "predictions.parquet"\n'
                      '[reference]\nstart = "2024-01-01"\nend = "2024-01-08"\n'
                      '[model]\ntask = "binary"\npositive_label = 1\n')
    return config


# ---------------------------------------------------------------- workers

def worker_mlmon(config: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from mlmon_core import slices
    from mlmon_core.config import Window
    from mlmon_core.source import open_config

    view = open_config(config)
    window = Window(None, None)
    report, seconds, peak = _measure(lambda: slices.find_slices(
        view, window, top=TOP, max_level=MAX_LEVEL, min_support=SUPPORT))
    # The coded matrix and errors, for the comparison runs (not timed).
    plan, _ = slices._error_plan(view, report.metric, window, None, (), "auto")
    min_rows = slices._min_rows(SUPPORT, report.rows)
    codings = slices._codings(view, list(view.roles.features), plan, window, (), min_rows,
                              slices.DEFAULT_BINS, None)
    coded = slices._coded_rows(view, codings, plan, window, ())
    np.save(OUT / "codes.npy", coded.codes)
    np.save(OUT / "errors.npy", coded.errors)
    return {"seconds": seconds, "peak_mib": peak, "rows": report.rows,
            "candidates_tested": report.candidates_tested, "significant": report.significant,
            "features": [c.name for c in codings],
            "slices": [s.description for s in report.slices]}


def worker_mlmon_sliceline_mode() -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from mlmon_core import slices

    codes, errors = np.load(OUT / "codes.npy"), np.load(OUT / "errors.npy")
    min_rows = int(SUPPORT * codes.shape[1])         # SliceLine's rounding of a share

    def work():
        coded = slices.CodedRows.from_arrays(codes, errors)
        memberships = [np.eye(int(codes[f].max()) + 1) for f in range(codes.shape[0])]
        settings = slices.SearchSettings(max_level=MAX_LEVEL, min_rows=min_rows, alpha=ALPHA,
                                         top=TOP, tested=False)
        found = slices.search(coded, memberships, settings)
        grid = [m.shape[0] for m in memberships]
        out = []
        for i in np.argsort(-found.score, kind="stable"):
            combo, preds = slices.predicate_indices(found, int(i), grid)
            out.append({"slice": sorted([int(f), int(p)] for f, p in zip(combo, preds)),
                        "score": float(found.score[i]), "rows": int(found.rows[i])})
        return out, found

    (top, found), seconds, peak = _measure(work)
    return {"seconds": seconds, "peak_mib": peak, "top": top,
            "combinations_evaluated": found.evaluated_combinations,
            "combinations_skipped": found.skipped_combinations}


def worker_sliceline() -> dict:
    import resource
    import warnings

    import numpy as np
    from sliceline.slicefinder import Slicefinder

    warnings.filterwarnings("ignore")
    codes, errors = np.load(OUT / "codes.npy"), np.load(OUT / "errors.npy")
    matrix = np.ascontiguousarray(codes.T.astype(np.int64))

    def work():
        finder = Slicefinder(alpha=ALPHA, k=TOP, max_l=MAX_LEVEL, min_sup=SUPPORT, verbose=False)
        try:
            finder.fit(matrix, errors)
        except MemoryError as exc:
            return str(exc)
        return finder

    resource.setrlimit(resource.RLIMIT_AS, (SLICELINE_MEMORY_CAP, SLICELINE_MEMORY_CAP))
    finder, seconds, peak = _measure(work)
    if isinstance(finder, str):
        return {"seconds": seconds, "peak_mib": peak, "top": [], "failed": finder}
    top = []
    for slice_codes, statistics in zip(finder.top_slices_, finder.top_slices_statistics_):
        conditions = sorted([int(f), int(v)] for f, v in enumerate(slice_codes) if v is not None)
        top.append({"slice": conditions, "score": statistics["slice_score"],
                    "rows": int(statistics["slice_size"])})
    return {"seconds": seconds, "peak_mib": peak, "top": top}


# ---------------------------------------------------------------- driver

def ensure_sliceline_venv() -> Path:
    """``bench/out/.venv-sliceline`` with the sliceline package (created once)."""
    python = SLICELINE_VENV / "bin" / "python"
    check = [str(python), "-c", "import sliceline"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(SLICELINE_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                    f"sliceline=={SLICELINE_VERSION}"], check=True)
    return python


def run_worker(python: str, name: str, *args: str) -> dict:
    out = OUT / f"{name}.json"
    subprocess.run([python, __file__, "--worker", name, *args, "--output", str(out)], check=True)
    return json.loads(out.read_text())


def same_best(mine: list[dict], theirs: list[dict], k: int) -> bool:
    """Whether both found the same k best slices (conditions and scores)."""
    a = {json.dumps(s["slice"]): round(s["score"], 9) for s in mine[:k]}
    b = {json.dumps(s["slice"]): round(s["score"], 9) for s in theirs[:k]}
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--skip-sliceline", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = {"mlmon": lambda: worker_mlmon(args.config),
                  "mlmon-sliceline-mode": worker_mlmon_sliceline_mode,
                  "sliceline": worker_sliceline}[args.worker]()
        Path(args.output).write_text(json.dumps(result))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    python = None if args.skip_sliceline else ensure_sliceline_venv()
    results = {"rows": args.rows, "alpha": ALPHA, "top": TOP, "max_level": MAX_LEVEL,
               "min_support": SUPPORT, "sliceline_version": SLICELINE_VERSION}
    for kind in ("numerical", "mixed"):
        results[kind] = compare(kind, args.rows, python)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


def compare(kind: str, rows: int, python: Path | None) -> dict:
    """The three runs on one dataset; prints a summary and returns the figures."""
    config = make_data(rows, kind)
    print(f"\n== {kind}: {rows:,} rows x 16 features ({config})")
    mine = run_worker(sys.executable, "mlmon", "--config", str(config))
    print(f"mlmon find_slices (defaults, from Parquet): {mine['seconds']:.2f} s, "
          f"peak +{mine['peak_mib']:.0f} MiB, {mine['candidates_tested']:,} candidates tested, "
          f"{mine['significant']:,} significant")
    for line in mine["slices"][:3]:
        print("   ", line)
    mode = run_worker(sys.executable, "mlmon-sliceline-mode")
    print(f"mlmon search with SliceLine's objective on the coded matrix: {mode['seconds']:.2f} s, "
          f"peak +{mode['peak_mib']:.0f} MiB ({mode['combinations_evaluated']} combinations "
          f"evaluated, {mode['combinations_skipped']} skipped by the bounds)")
    out = {"mlmon": mine, "mlmon_sliceline_mode": mode}
    if python is None:
        return out
    theirs = run_worker(str(python), "sliceline")
    out["sliceline"] = theirs
    if "failed" in theirs:
        print(f"sliceline {SLICELINE_VERSION}: out of memory after {theirs['seconds']:.0f} s "
              f"(address space capped at {SLICELINE_MEMORY_CAP / 1024 ** 3:.0f} GiB): "
              f"{theirs['failed']}")
        return out
    same = same_best(mode["top"], theirs["top"], TOP)
    out["same_best_slices"] = same
    print(f"sliceline {SLICELINE_VERSION} on the same coded matrix: {theirs['seconds']:.2f} s, "
          f"peak +{theirs['peak_mib']:.0f} MiB")
    print(f"sliceline / mlmon find_slices: time {theirs['seconds'] / mine['seconds']:.1f}x, "
          f"memory {theirs['peak_mib'] / max(mine['peak_mib'], 1e-9):.1f}x")
    print(f"sliceline / mlmon SliceLine mode: time {theirs['seconds'] / mode['seconds']:.1f}x, "
          f"memory {theirs['peak_mib'] / max(mode['peak_mib'], 1e-9):.1f}x")
    print(f"same {TOP} best SliceLine-score slices: {same}")
    for a, b in zip(mode["top"][:3], theirs["top"][:3]):
        print(f"    mlmon {a['slice']} {a['score']:.6f}   sliceline {b['slice']} {b['score']:.6f}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
