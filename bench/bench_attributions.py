"""Time to the first attribution view on the sample data, cold and cached, against a notebook.

The first view of the Attributions page is the attribution drift of the production model: SHAP
values of a sample of the last 7 days beside a sample of the reference window (both of
``[attributions] sample`` rows), mean |SHAP| per logged feature with bootstrap CIs. Measured,
each as a whole Python process (interpreter, imports, opening the log, the view):

* **cold**: the attribution store under ``.mlmon/attributions`` is empty, so every row is
  explained;
* **cached**: a new process after the cold one, reading the stored SHAP values;
* **again in-process**: the same call repeated in the cold process (what a rerun of the page
  costs before Streamlit's own cache).

The baseline, in the same run, is what a notebook does for the same numbers without mlmon: read
the log with pandas, keep the production rows of both windows, sample the same number of rows,
load the skops pipeline, run ``shap.TreeExplainer`` on the transformed rows and average |SHAP|.

    .venv/bin/python bench/bench_attributions.py [--rows 300000] [--out bench/out/attributions]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_mlmon(config: str) -> dict:
    """The page's first view through mlmon's core, then the same call again in this process."""
    began = time.perf_counter()
    from mlmon_core import attributions, windows
    from mlmon_core.source import open_config

    view = open_config(config)
    segment = _production(view)
    window, reference = windows.default_window(view), windows.reference_window(view)
    result = attributions.importance(view, window, segment, source="model", compare_to=reference)
    first = time.perf_counter() - began
    again_began = time.perf_counter()
    attributions.importance(view, window, segment, source="model", compare_to=reference)
    return {"first_seconds": first, "again_seconds": time.perf_counter() - again_began,
            "computed_rows": result.computed_rows, "cached_rows": result.cached_rows,
            "sample_rows": result.sample_rows, "reference_rows": result.reference_rows,
            "top": list(result.features["feature"][:3])}


def _production(view):
    """The production model's rows (the sample log also holds a shadow model's twins)."""
    from mlmon_core import sql

    return (sql.Condition(view.roles.model, "==", "v1.4"),) if view.roles.model else ()


def run_notebook(config: str, rows: int) -> dict:
    """The same attribution drift the way a notebook computes it: pandas, skops, shap."""
    began = time.perf_counter()
    import numpy as np
    import pandas as pd
    import shap
    import skops.io

    folder = Path(config).parent
    log = pd.read_parquet(folder / "data" / "predictions")
    log = log[log["model_version"] == "v1.4"]
    end = log["timestamp"].max().normalize() + pd.Timedelta(days=1)
    windows = {"current": (end - pd.Timedelta(days=7), end),
               "reference": (pd.Timestamp("2026-06-01"), pd.Timestamp("2026-07-01"))}
    model_file = str(folder / "data" / "model.skops")
    pipeline = skops.io.load(model_file, trusted=skops.io.get_untrusted_types(file=model_file))
    features = list(pipeline.feature_names_in_)
    explainer = shap.TreeExplainer(pipeline[-1])
    importances = {}
    for name, (start, stop) in windows.items():
        chosen = log[(log["timestamp"] >= start) & (log["timestamp"] < stop)]
        chosen = chosen.sample(min(rows, len(chosen)), random_state=0)
        values = explainer.shap_values(pipeline[:-1].transform(chosen[features]))
        importances[name] = np.abs(np.asarray(values)).mean(axis=0)
    return {"first_seconds": time.perf_counter() - began,
            "features": len(importances["current"])}


def _timed_process(*arguments: str) -> dict:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"benchmark worker failed:\n{done.stderr}")
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    payload["wall_seconds"] = time.perf_counter() - began
    return payload


def _project(out: Path, rows: int) -> str:
    config = out / "mlmon.toml"
    marker = out / "rows.json"
    if not config.exists() or not marker.exists() or json.loads(marker.read_text()) != rows:
        from mlmon_core.demo import generate

        shutil.rmtree(out, ignore_errors=True)
        began = time.perf_counter()
        generate(out, rows=rows)
        marker.write_text(json.dumps(rows))
        print(f"generated the sample project ({rows:,} rows) in {time.perf_counter() - began:.1f} s")
    return str(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "attributions"))
    parser.add_argument("--worker", choices=("mlmon", "notebook"))
    parser.add_argument("--config")
    parser.add_argument("--sample", type=int)
    options = parser.parse_args()
    if options.worker == "mlmon":
        return print(json.dumps(run_mlmon(options.config)))
    if options.worker == "notebook":
        return print(json.dumps(run_notebook(options.config, options.sample)))

    out = Path(options.out)
    config = _project(out, options.rows)
    shutil.rmtree(out / ".mlmon", ignore_errors=True)
    cold = _timed_process("--worker", "mlmon", "--config", config)
    cached = _timed_process("--worker", "mlmon", "--config", config)
    notebook = _timed_process("--worker", "notebook", "--config", config,
                              "--sample", str(cold["sample_rows"]))
    print(f"first attribution view (attribution drift of the production model), "
          f"{cold['sample_rows']:,} current + {cold['reference_rows']:,} reference rows, "
          f"{options.rows:,}-row sample log")
    print(f"{'':34}{'process s':>10}{'view s':>8}{'explained':>11}")
    rows = (("mlmon, cold (empty store)", cold, cold["computed_rows"]),
            ("mlmon, cached (new process)", cached, cached["computed_rows"]),
            ("notebook: pandas + skops + shap", notebook, 2 * cold["sample_rows"]))
    for name, run, explained in rows:
        print(f"{name:34}{run['wall_seconds']:10.2f}{run['first_seconds']:8.2f}{explained:11,}")
    print(f"{'mlmon, same call again in-process':34}{'':10}{cold['again_seconds']:8.2f}")
    print(f"cold / notebook: {cold['wall_seconds'] / notebook['wall_seconds']:.2f}x the time; "
          f"cached / notebook: {cached['wall_seconds'] / notebook['wall_seconds']:.2f}x; "
          f"again in-process: {cold['again_seconds'] / notebook['wall_seconds']:.3f}x")
    print(f"top features (mlmon): {', '.join(cold['top'])}")


if __name__ == "__main__":
    main()
