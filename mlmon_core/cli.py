"""The ``mlmon`` command: arguments in, core calls, JSON and exit codes out.

Exit codes: 0 ok, 1 an alert fired (``check``), 2 bad input or configuration (message on stderr),
3 an internal error (a bug; never confused with an alert).
Heavy modules are imported inside the commands that need them, so ``mlmon --help`` stays fast.

Each command is a pair: ``_add_<name>(subparsers)`` declares its arguments and sets ``handler``;
the handler takes the parsed arguments and returns a ``Result``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable

from mlmon_core.errors import MlmonError

EXIT_OK, EXIT_ALERT, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
DEFAULT_SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


@dataclass
class Result:
    """What a command produced: the JSON payload, an optional human text, and the exit code."""

    payload: dict[str, Any]
    text: str | None = None
    exit_code: int = EXIT_OK


def to_jsonable(value: Any) -> Any:
    """Plain JSON: floats (NaN/inf become null), ISO-8601 times, lists for tuples and arrays."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_json") and callable(value.to_json) and not isinstance(value, type):
        return to_jsonable(value.to_json())
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line message, as the contract says."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        print(f"mlmon: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", "-c", required=required, metavar="FILE",
                        help="the project file (mlmon.toml) or the folder holding it")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_analysis_options(parser: argparse.ArgumentParser, window_flag: str = "--window") -> None:
    _add_config(parser)
    parser.add_argument(window_flag, metavar="A..B",
                        help="half-open time window START..END (default: the last 7 days of data)")
    parser.add_argument("--where", action="append", metavar="EXPR", default=[],
                        help="segment filter such as \"age >= 60 and region in ('West')\"; repeatable")
    parser.add_argument("--model", metavar="NAME",
                        help="only rows of this model/version (the config's model column)")
    _add_json(parser)


def open_view(args: argparse.Namespace):
    """Open the log named by ``--config``."""
    from mlmon_core.source import open_config

    return open_config(args.config)


def segment_of(args: argparse.Namespace, view) -> tuple:
    """The segment from ``--where`` (and ``--model``), checked against the schema."""
    from mlmon_core import sql

    segment = sql.parse_wheres(getattr(args, "where", None))
    model = getattr(args, "model", None)
    if model is not None:
        if not view.roles.model:
            raise MlmonError("--model needs a model column: set [columns] model in the config")
        segment = segment + (sql.Condition(view.roles.model, "==", value=model),)
    sql.compile_segment(segment, view.column_types)
    return segment


def window_of(view, text: str | None, what: str = "--window"):
    """The window from its text, or the default (the last 7 days of data)."""
    from mlmon_core import sql
    from mlmon_core.windows import default_window

    return sql.parse_window(text, what) if text else default_window(view)


def optional_window(text: str | None, what: str):
    """The window an optional flag gives, or None when it is not set."""
    from mlmon_core import sql

    return sql.parse_window(text, what) if text else None


def analysis_inputs(args: argparse.Namespace) -> tuple:
    """(view, window, segment) from the options ``_add_analysis_options`` adds."""
    view = open_view(args)
    segment = segment_of(args, view)
    return view, window_of(view, args.window), segment


# ---------------------------------------------------------------- foundation commands

def _add_demo(sub) -> None:
    parser = sub.add_parser("demo", help="write the sample project (a realistic loan-default log)",
                            description="Generate the sample prediction log, labels, models and "
                                        "mlmon.toml into a folder.")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--rows", type=int, default=300_000, help="approximate rows (default 300000)")
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args) -> Result:
    from mlmon_core.demo import generate

    if args.rows < 1000:
        raise MlmonError(f"--rows {args.rows}: the sample needs at least 1000 rows")
    config_path = generate(args.out, seed=args.seed, rows=args.rows)
    return Result({"config": str(config_path)}, f"sample project written: {config_path}")


def _add_app(sub) -> None:
    parser = sub.add_parser("app", help="start the Streamlit app on a project",
                            description="Start the mlmon web app on a project file.")
    _add_config(parser, required=False)
    parser.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    parser.add_argument("--headless", action="store_true", help="do not open a browser")
    parser.set_defaults(handler=_cmd_app)


def _cmd_app(args) -> Result:
    import os
    import subprocess

    from mlmon_core.config import load_config

    config = args.config or str(DEFAULT_SAMPLE / "mlmon.toml")
    load_config(config)  # fail here, with exit code 2, rather than inside the app
    app = Path(__file__).resolve().parent.parent / "app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
               "--browser.gatherUsageStats", "false"]
    if args.headless:
        command += ["--server.headless", "true"]
    env = dict(os.environ, MLMON_CONFIG=str(Path(config).resolve()))
    code = subprocess.call(command, env=env)
    return Result({"exit_code": code}, None, code)


def _add_ingest(sub) -> None:
    for name, kind in (("ingest", "predictions"), ("ingest-labels", "labels")):
        parser = sub.add_parser(name, help=f"append {kind} files to the managed store",
                                description=f"Append {kind} files to the directory that "
                                            f"[source] {kind} names, atomically.")
        parser.add_argument("files", nargs="+", metavar="FILE")
        _add_config(parser)
        _add_json(parser)
        parser.set_defaults(handler=_cmd_ingest, kind=kind)


def _cmd_ingest(args) -> Result:
    from mlmon_core.config import load_config
    from mlmon_core.store import ingest

    report = ingest(load_config(args.config), args.files, kind=args.kind)
    text = f"added {report['rows']} rows in {len(report['parts'])} part(s) to {report['store']}"
    return Result(report, text)


def _add_schema(sub) -> None:
    parser = sub.add_parser("schema", help="columns, roles, kinds and row counts of the log")
    _add_config(parser)
    _add_json(parser)
    parser.set_defaults(handler=_cmd_schema)


def _cmd_schema(args) -> Result:
    payload = open_view(args).schema_json()
    lines = [f"{payload['rows']:,} rows ({payload['labeled_rows']:,} labeled), task {payload['task']}, "
             f"{payload['time_range']['start']} .. {payload['time_range']['end']}"]
    lines += [f"  {c['name']:<28} {c['type']:<12} {c['role']:<12} {c['kind']}"
              for c in payload["columns"]]
    return Result(payload, "\n".join(lines))


# ---------------------------------------------------------------- metrics

def _add_metrics(sub) -> None:
    parser = sub.add_parser(
        "metrics", help="performance metrics with 95%% confidence intervals, overall and per bucket",
        description="Accuracy, AUC, F1, calibration (binary), macro/weighted F1 and per-class "
                    "precision/recall (multiclass) or MAE, RMSE, R² (regression) over a window and "
                    "segment, each with a 95%% CI and its sample size; per time bucket with --by.")
    _add_analysis_options(parser)
    parser.add_argument("--by", choices=("hour", "day", "week", "month"), default=None,
                        help="also compute every metric per time bucket (default: no buckets)")
    parser.set_defaults(handler=_cmd_metrics)


def _cmd_metrics(args) -> Result:
    from mlmon_core.metrics import compute_metrics, describe_metrics, metrics_payload

    view, window, segment = analysis_inputs(args)
    result = compute_metrics(view, window, segment, bucket=args.by)
    return Result(metrics_payload(result), describe_metrics(result))


# ---------------------------------------------------------------- estimate, service

def _add_estimate(sub) -> None:
    parser = sub.add_parser(
        "estimate", help="estimated quality where labels have not arrived yet (binary, CBPE)",
        description="Estimate accuracy, precision, recall, F1 and ROC AUC of a binary classifier "
                    "from its calibrated score, for rows without labels, per bucket, with a "
                    "sampling-error band; realized values and the estimate's error where labels exist.")
    _add_analysis_options(parser)
    parser.add_argument("--by", choices=("hour", "day", "week", "month"), default="day",
                        help="time bucket (default day)")
    parser.add_argument("--reference", metavar="A..B",
                        help="window whose labeled rows calibrate the score (default: the config's "
                             "[reference], else the first third of the log)")
    parser.add_argument("--assume-calibrated", action="store_true",
                        help="use raw scores as probabilities when the reference cannot calibrate")
    parser.set_defaults(handler=_cmd_estimate)


def _cmd_estimate(args) -> Result:
    from mlmon_core import sql
    from mlmon_core.estimate import METRICS, estimate_performance

    view, window, segment = analysis_inputs(args)
    reference = optional_window(args.reference, "--reference")
    result = estimate_performance(view, window, segment, bucket=args.by, reference=reference,
                                  assume_calibrated=args.assume_calibrated)
    payload = {"window": window.to_json(), "segment": sql.segment_to_json(segment),
               **result.to_json()}
    counts = result.counts
    lines = [f"estimated quality of {counts.get('unlabeled_rows', 0):,} unlabeled rows "
             f"(of {counts.get('rows', 0):,}) in {window}, {sql.describe_segment(segment)}",
             f"calibration: {result.calibration.get('method')} — {result.calibration.get('reason')}"]
    for metric in METRICS:
        cell, realized = result.window[metric], result.window_realized[metric]
        shown = (f"{cell['value']:.3f} [{_number(cell['ci_low'])}, {_number(cell['ci_high'])}]"
                 if cell["value"] is not None else cell["reason"])
        lines.append(f"  {metric:<10} {shown}   realized on labeled rows: "
                     f"{_number(realized['value'])}")
    return Result(payload, "\n".join(lines))


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _add_service(sub) -> None:
    parser = sub.add_parser(
        "service", help="throughput, latency percentiles and error rate per bucket",
        description="Service health from the log's latency and status columns: rows per bucket and "
                    "per hour, p50/p95/p99 latency and error rate.")
    _add_analysis_options(parser)
    parser.add_argument("--by", choices=("hour", "day", "week", "month"), default="day",
                        help="time bucket (default day)")
    parser.add_argument("--error-from", type=float, default=500, metavar="CODE",
                        help="numeric statuses at or above this are errors (default 500)")
    parser.add_argument("--ok-status", action="append", default=None, metavar="TEXT",
                        help="a text status that means success (repeatable; default ok, success, "
                             "true, ...)")
    parser.set_defaults(handler=_cmd_service)


def _cmd_service(args) -> Result:
    from mlmon_core import sql
    from mlmon_core.service import OK_VALUES, ErrorRule, service_health

    view, window, segment = analysis_inputs(args)
    rule = ErrorRule(numeric_error_from=args.error_from,
                     ok_values=tuple(args.ok_status) if args.ok_status else OK_VALUES)
    result = service_health(view, window, segment, bucket=args.by, error_rule=rule)
    payload = {"window": window.to_json(), "segment": sql.segment_to_json(segment),
               **result.to_json()}
    total = result.window
    rate = total.get("rows_per_hour")
    lines = [f"{total['rows']:,} rows in {window}"
             + (f" ({rate:,.1f} per hour)" if rate is not None else ""),
             f"latency p50/p95/p99: {_number(total['latency_p50'])} / {_number(total['latency_p95'])}"
             f" / {_number(total['latency_p99'])}   error rate: {_number(total['error_rate'])}"]
    if result.reason:
        lines.append(result.reason)
    return Result(payload, "\n".join(lines))


# ---------------------------------------------------------------- slices

def _add_slices(sub) -> None:
    parser = sub.add_parser(
        "slices", help="weak segments (or, with --compare-to, segments that degraded), found "
                       "automatically and tested",
        description="Search conjunctions of up to --max-level conditions on the features for slices "
                    "whose error is significantly higher than the rest (Benjamini-Hochberg over "
                    "every candidate tested), ranked by a size-aware score. With --compare-to, "
                    "rank slices by how much more their error rose than the rest's.")
    _add_analysis_options(parser)
    parser.add_argument("--compare-to", nargs="?", const="", default=None, metavar="A..B",
                        help="find degraded slices: compare with this window (without a value: "
                             "the reference window)")
    parser.add_argument("--metric", choices=("error_rate", "log_loss", "abs_error", "squared_error"),
                        help="per-row error (default: error_rate for classifiers, abs_error for "
                             "regression)")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="slices to report (default 10)")
    parser.add_argument("--max-level", type=int, default=3, metavar="L",
                        help="at most this many conditions per slice (default 3)")
    parser.add_argument("--min-support", type=float, default=0.01, metavar="S",
                        help="minimum slice size: a share of the window's rows below 1, else a row "
                             "count (default 0.01)")
    parser.add_argument("--fdr", type=float, default=0.05, metavar="Q",
                        help="false discovery rate of the reported slices (default 0.05)")
    parser.add_argument("--alpha", type=float, default=None, metavar="A",
                        help="weight of the error term in the score, in (0, 1] (default 0.99)")
    parser.add_argument("--bins", type=int, default=10, metavar="B",
                        help="quantile bins per numerical feature (default 10)")
    parser.add_argument("--errors-from", choices=("auto", "labels", "estimate"), default="auto",
                        help="per-row errors from labels, or estimated from the score (default: "
                             "labels where the windows have them)")
    parser.set_defaults(handler=_cmd_slices)


def _cmd_slices(args) -> Result:
    from mlmon_core import slices

    view, window, segment = analysis_inputs(args)
    options = dict(metric=args.metric, top=args.top, max_level=args.max_level,
                   min_support=args.min_support, fdr=args.fdr, bins=args.bins,
                   error_source=args.errors_from)
    if args.alpha is not None:
        options["alpha"] = args.alpha
    if args.compare_to is None:
        report = slices.find_slices(view, window, segment, **options)
    else:
        compare_to = optional_window(args.compare_to, "--compare-to")
        report = slices.find_degraded_slices(view, window, compare_to, segment, **options)
    return Result(report.to_json(), report.to_text())


# ---------------------------------------------------------------- compare-models, ab

def _add_compare_models(sub) -> None:
    parser = sub.add_parser(
        "compare-models", help="shadow candidate against production on the same requests",
        description="Pair the candidate's rows with production's rows for the same requests (by "
                    "request_id, else a repeated id, else the timestamp and features) and compare "
                    "them: agreement, accuracy with McNemar's test, AUC with DeLong's test and a "
                    "paired bootstrap, and where they disagree. --where selects requests by their "
                    "production row.")
    _add_analysis_options(parser)
    parser.add_argument("--production", metavar="NAME",
                        help="production model (default: the one with most rows in the window)")
    parser.add_argument("--candidate", metavar="NAME",
                        help="candidate (shadow) model (default: the only other one)")
    parser.add_argument("--pair-on", action="append", metavar="COLUMN",
                        help="pairing key column, repeatable (default: request_id, else the id "
                             "column when ids repeat across models, else timestamp + features)")
    parser.add_argument("--by", choices=("hour", "day", "week", "month"), default="day",
                        help="time bucket of the agreement series (default day)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the disagreement rate by feature group")
    parser.set_defaults(handler=_cmd_compare_models)


def _cmd_compare_models(args) -> Result:
    from mlmon_core.compare import compare_models
    from mlmon_core.errors import NotComputableError

    if args.model is not None:
        raise MlmonError("compare-models compares two models: name them with --production and "
                         "--candidate instead of --model")
    view, window, segment = analysis_inputs(args)
    result = compare_models(view, window, segment, production=args.production,
                            candidate=args.candidate, pair_on=args.pair_on, bucket=args.by,
                            breakdown=not args.no_breakdown)
    if result.pairs == 0:
        raise NotComputableError(result.summary)
    lines = [result.summary]
    top = result.disagreement[result.disagreement["significant"] == True]  # noqa: E712
    for row in top.head(5).itertuples(index=False):
        lines.append(f"  disagree more where {row.group}: {row.disagreement_rate:.1%} of "
                     f"{row.pairs:,} pairs vs {row.rest_rate:.1%} elsewhere (q = {row.q_value:.2g})")
    lines += [f"  note: {note}" for note in result.notes]
    return Result(result.to_json(), "\n".join(lines))


def _add_ab(sub) -> None:
    parser = sub.add_parser(
        "ab", help="A/B test: metrics per arm, differences with tests and power, sample ratio mismatch",
        description="Read an A/B test from the log's variant column: each arm's metrics with Wilson "
                    "intervals, each arm against the control (two-proportion z-test, interval, "
                    "power, minimum detectable effect) and a sample ratio mismatch check.")
    _add_analysis_options(parser)
    parser.add_argument("--arm-column", metavar="COLUMN",
                        help="the column naming the arm (default: the config's variant column)")
    parser.add_argument("--control", metavar="ARM", help="control arm (default: the first by name)")
    parser.add_argument("--expected-split", metavar="ARM=SHARE,...",
                        help="expected traffic shares such as A=0.5,B=0.5 (default: equal)")
    parser.add_argument("--metric", action="append", metavar="NAME",
                        help="accuracy, precision, recall, positive_rate or actual_positive_rate; "
                             "repeatable (default: the first four)")
    parser.add_argument("--alpha", type=float, default=0.05, metavar="A",
                        help="significance level of the tests and intervals (default 0.05)")
    parser.set_defaults(handler=_cmd_ab)


def _expected_split(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    split: dict[str, float] = {}
    for part in text.split(","):
        arm, sep, share = part.partition("=")
        try:
            split[arm.strip()] = float(share)
        except ValueError:
            sep = ""
        if not sep or not arm.strip():
            raise MlmonError(f"--expected-split {text!r}: write ARM=SHARE pairs such as A=0.5,B=0.5")
    return split


def _cmd_ab(args) -> Result:
    from mlmon_core.compare import DEFAULT_AB_METRICS, ab_test
    from mlmon_core.errors import NotComputableError

    if not 0 < args.alpha < 1:
        raise MlmonError(f"--alpha {args.alpha}: must be between 0 and 1")
    view, window, segment = analysis_inputs(args)
    result = ab_test(view, window, segment, arm_column=args.arm_column,
                     expected_split=_expected_split(args.expected_split),
                     metrics=tuple(args.metric) if args.metric else DEFAULT_AB_METRICS,
                     control=args.control, alpha=args.alpha)
    if not result.arms:
        raise NotComputableError(result.summary)
    lines = [result.summary]
    for arm in result.arms:
        shown = ", ".join(f"{name} {_number(value.value)}" for name, value in arm.metrics.items())
        lines.append(f"  {arm.name}: {arm.rows:,} rows ({arm.labeled_rows:,} labeled); {shown}")
    return Result(result.to_json(), "\n".join(lines))


# ---------------------------------------------------------------- explain, explain-row

def _add_explain(sub) -> None:
    parser = sub.add_parser(
        "explain", help="feature importance (mean |SHAP|) with CIs; what drives errors or drift",
        description="Mean |SHAP| per feature over a sample of the window's rows, with bootstrap "
                    "CIs. Sources: logged attributions (shap__<feature> columns), the model file "
                    "([model] path), an error model fitted on the labeled rows (errors), or a "
                    "domain classifier telling reference rows from the window's (drift). With "
                    "--compare-to, also the reference window's importance and the change. Model "
                    "files: .skops (scikit-learn), .txt (LightGBM), .json/.ubj (XGBoost); "
                    ".pkl/.joblib only with [model] trust = true, because loading a pickle runs "
                    "the code inside it.")
    _add_analysis_options(parser)
    parser.add_argument("--compare-to", nargs="?", const="", default=None, metavar="A..B",
                        help="reference window to compare with (without a value: the config's "
                             "reference window); drift always compares, by default with it")
    parser.add_argument("--source", choices=("auto", "logged", "model", "errors", "drift"),
                        default="auto",
                        help="where attributions come from (default: logged, else the model)")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="rows per window (default: [attributions] sample, 2000; errors: "
                             "fit_sample, 20000 labeled rows; drift: fit_sample, 5000 per window)")
    parser.set_defaults(handler=_cmd_explain)


def _cmd_explain(args) -> Result:
    from mlmon_core import attributions, sql
    from mlmon_core.windows import reference_window

    view, window, segment = analysis_inputs(args)
    compare_to = None
    if args.compare_to is not None:
        compare_to = sql.parse_window(args.compare_to, "--compare-to") if args.compare_to \
            else reference_window(view)
    if args.sample is not None and args.sample < 1:
        raise MlmonError(f"--sample {args.sample}: must be at least 1")
    result = attributions.importance(view, window, segment, source=args.source,
                                     compare_to=compare_to, sample=args.sample)
    return Result(result.to_json(), _explain_text(result))


def _explain_text(result) -> str:
    lines = [f"{result.source} attributions, {result.window} ({result.sample_rows:,} sampled rows"
             + (f"; reference {result.reference_rows:,} rows" if result.reference_rows else "")
             + f"), {result.method or ''}".rstrip(", ")]
    if result.model_quality is not None:
        lines.append(f"  model quality: {result.model_quality.describe()}")
    if result.control is not None:
        lines.append(f"  {result.control.describe()}")
    if result.ranking:
        lines.append(f"  ranking: {result.ranking}")
    if result.focus is not None:
        lines.append(f"  focus: {result.focus.describe()}")
    if result.reason:
        lines.append(f"  not computable because {result.reason}")
    compared = result.compared
    for row in result.features.head(15).itertuples(index=False):
        text = f"  {row.feature:<28} {row.mean_abs:8.4f} [{row.ci_low:.4f}, {row.ci_high:.4f}]"
        if result.source == "errors":
            text = (f"  {row.feature:<28} share {row.error_share:+.4f} "
                    f"[{row.error_share_ci_low:+.4f}, {row.error_share_ci_high:+.4f}]  "
                    f"mean |SHAP| {row.mean_abs:.4f}")
        if compared:
            text += (f"  reference {row.reference_mean_abs:.4f}  change {row.difference:+.4f} "
                     f"[{row.difference_ci_low:+.4f}, {row.difference_ci_high:+.4f}]")
        lines.append(text)
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def _add_explain_row(sub) -> None:
    parser = sub.add_parser(
        "explain-row", help="one prediction's attributions (base value + SHAP per feature)",
        description="Explain one logged prediction by its id: the base value, each feature's "
                    "value and SHAP value (largest first), and the model output they add up to.")
    _add_config(parser)
    parser.add_argument("--id", required=True, metavar="ID", help="the row's id")
    parser.add_argument("--source", choices=("auto", "logged", "model"), default="auto",
                        help="logged attributions or the model file (default: logged, else model)")
    _add_json(parser)
    parser.set_defaults(handler=_cmd_explain_row)


def _cmd_explain_row(args) -> Result:
    from mlmon_core.attributions import explain_row

    view = open_view(args)
    result = explain_row(view, args.id, source=args.source)
    base = "n/a" if result.base_value is None else f"{result.base_value:.4f}"
    shown = "n/a" if result.prediction is None else f"{result.prediction:.4f}"
    lines = [f"row {result.id}: base value {base} + attributions = {shown} "
             f"({result.output_space or 'model output'}; {result.source})"]
    lines += [f"  {row.feature:<28} {str(row.value):>20}  {row.shap:+.4f}"
              for row in result.features.itertuples(index=False)]
    lines += [f"  note: {note}" for note in result.notes]
    return Result(result.to_json(), "\n".join(lines))


def _add_quality(sub) -> None:
    parser = sub.add_parser("quality", help="data-quality checks of a window against the reference",
                            description="Volume, missing values, new categories, out-of-range and "
                                        "unparseable values, NaN/inf, constant columns and "
                                        "duplicate ids, each with a severity.")
    _add_analysis_options(parser)
    parser.add_argument("--reference", metavar="A..B",
                        help="reference window (default: [reference] in the config, else the "
                             "first third of the log's days)")
    parser.set_defaults(handler=_cmd_quality)


def _cmd_quality(args) -> Result:
    from mlmon_core.quality import check_quality
    from mlmon_core.windows import reference_window

    view = open_view(args)
    window = window_of(view, args.window)
    reference = window_of(view, args.reference, "--reference") if args.reference \
        else reference_window(view)
    result = check_quality(view, window, reference, segment_of(args, view))
    lines = [f"{result.rows:,} rows in {window} (reference {reference}: "
             f"{result.reference_rows:,} rows); {len(result.findings)} finding(s)"]
    lines += [f"  [{f.severity}] {f.message}" for f in result.findings]
    return Result(result.to_json(), "\n".join(lines))


def _add_drift(sub) -> None:
    parser = sub.add_parser("drift", help="distribution drift of features, prediction, score and "
                                          "target against the reference",
                            description="Per-column drift tests with Evidently's default choice "
                                        "(KS / chi-square / z up to 1000 reference rows, "
                                        "Wasserstein / Jensen-Shannon above), overridable in "
                                        "[drift.columns]; dataset drift by the share of drifted "
                                        "columns.")
    _add_analysis_options(parser, window_flag="--current")
    parser.add_argument("--reference", metavar="A..B",
                        help="reference window (default: [reference] in the config, else the "
                             "first third of the log's days)")
    parser.set_defaults(handler=_cmd_drift)


def _cmd_drift(args) -> Result:
    from mlmon_core.drift import compute_drift
    from mlmon_core.windows import reference_window

    view = open_view(args)
    current = window_of(view, args.current, "--current")
    reference = window_of(view, args.reference, "--reference") if args.reference \
        else reference_window(view)
    result = compute_drift(view, current, reference, segment_of(args, view))
    share = "n/a" if result.drift_share is None else f"{result.drift_share:.0%}"
    verdict = {True: "dataset drift", False: "no dataset drift", None: "not computable"}
    lines = [f"{verdict[result.dataset_drift]}: {share} of columns drifted "
             f"(reference {reference}: {result.reference_rows:,} rows, current {current}: "
             f"{result.current_rows:,} rows)"]
    for column in result.columns:
        if column.reason:
            lines.append(f"  {column.column:<28} {column.reason}")
            continue
        score = column.p_value if column.p_value is not None else column.statistic
        label = "p" if column.p_value is not None else column.test
        mark = "DRIFT" if column.drifted else "ok"
        if column.drifted and column.beyond_noise is False:
            mark = "DRIFT (within sampling noise: likely not real)"
        shown = "n/a" if score is None else f"{score:.3g}"
        noise = "" if column.noise_level is None else f", noise level {column.noise_level:.3g}"
        lines.append(f"  {column.column:<28} {column.test:<14} {label}={shown} "
                     f"(threshold {column.threshold:g}{noise})  {mark}")
    lines.append(f"{len(result.drifted_beyond_noise)} column(s) drifted beyond sampling noise "
                 "(noise level: the distance 95% of same-distribution windows of these sizes stay "
                 "under)")
    return Result(result.to_json(), "\n".join(lines))


# ---------------------------------------------------------------- segment

def _add_segment(sub) -> None:
    parser = sub.add_parser(
        "segment", help="a segment against the rest of the rows, optionally broken down by a feature",
        description="Every metric in the segment (--where), in the rest of the window's rows and "
                    "overall, each with its 95%% CI, the segment's share of traffic, and the "
                    "segment − rest difference with a p-value. With --by, a per-row metric (error "
                    "rate, log loss, absolute error...) per bin or category of a feature within "
                    "the segment, sorted by how far each cell is from the rest.")
    _add_analysis_options(parser)
    parser.add_argument("--by", metavar="FEATURE",
                        help="also break the metric down by this feature (numerical features are "
                             "cut at quantiles of the reference window)")
    parser.add_argument("--metric", metavar="NAME",
                        help="per-row metric of the breakdown (default: error_rate, or abs_error "
                             "for regression)")
    parser.add_argument("--bins", type=int, default=10, metavar="N",
                        help="bins of a numerical --by feature (default 10)")
    parser.add_argument("--reference", metavar="A..B",
                        help="window whose quantiles cut numerical features (default: the config's "
                             "[reference], else the first third of the log)")
    parser.set_defaults(handler=_cmd_segment)


def _cmd_segment(args) -> Result:
    from mlmon_core import segments

    view, window, segment = analysis_inputs(args)
    reference = optional_window(args.reference, "--reference")
    comparison = segments.segment_vs_rest(view, window, segment)
    payload = comparison.to_json()
    text = comparison.to_text()
    if args.by:
        result = segments.breakdown(view, window, args.by, args.metric, segment, reference,
                                    bins=args.bins)
        payload["breakdown"] = result.to_json()
        text += "\n" + result.to_text()
    elif args.metric:
        raise MlmonError("--metric chooses the metric of the breakdown: give --by FEATURE too")
    return Result(payload, text)


# ---------------------------------------------------------------- label-queue

def _add_label_queue(sub) -> None:
    parser = sub.add_parser(
        "label-queue", help="pick unlabeled rows to send for labeling, each with the reason why",
        description="Choose N unlabeled rows of the window and segment by one or more strategies "
                    "(uncertainty: score nearest the threshold; segment: rows of weak or degraded "
                    "slices; drift: rows a domain classifier finds most unlike the reference; "
                    "diverse: stratified over bins of the most informative features; random: "
                    "the baseline). With --out, write them as CSV or Parquet and record the "
                    "export, so the same rows are never proposed again; return their labels with "
                    "`mlmon ingest-labels FILE --config F`.")
    _add_analysis_options(parser)
    parser.add_argument("--strategy", default="uncertainty", metavar="S[:N],...",
                        help="strategies with optional budgets, e.g. uncertainty:50,segment:30,"
                             "random:20; without a count a strategy gets an even share of --n "
                             "(default uncertainty)")
    parser.add_argument("--n", type=int, default=None, metavar="N",
                        help="rows in the queue (default: the sum of the strategies' counts)")
    parser.add_argument("--out", metavar="FILE",
                        help="write the queue to FILE (.csv or .parquet) and record the export; "
                             "without it the picks are only shown")
    parser.add_argument("--dry-run", action="store_true",
                        help="only show the picks: write and record nothing, even with --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    parser.add_argument("--reference", metavar="A..B",
                        help="reference window for drift and degraded slices (default: the "
                             "config's [reference], else the first third of the log)")
    parser.add_argument("--slices", choices=("weak", "degraded"), default="weak",
                        help="segment strategy: weak slices of the window, or slices that "
                             "degraded since the reference (default weak)")
    parser.set_defaults(handler=_cmd_label_queue)


def _cmd_label_queue(args) -> Result:
    from mlmon_core import labeling

    budgets = labeling.parse_strategies(args.strategy, args.n)  # bad input fails before opening
    if args.out and not args.dry_run:
        labeling.check_export_path(args.out)
    view, window, segment = analysis_inputs(args)
    reference = optional_window(args.reference, "--reference")
    queue = labeling.label_queue(view, window, segment, dict(budgets), seed=args.seed,
                                 reference=reference, slice_mode=args.slices)
    if args.out and not args.dry_run:
        queue = labeling.export_queue(view, queue, args.out)
    return Result(queue.to_json(), queue.to_text())


# ---------------------------------------------------------------- check (alerts)

def _add_check(sub) -> None:
    parser = sub.add_parser(
        "check", help="evaluate the alert rules; exit 1 when any fires (for cron and orchestrators)",
        description="Evaluate the [[alerts]] rules of the config and the built-in alerts (quality "
                    "drop beyond the reference's CI, estimated quality drop while labels are "
                    "missing, dataset and feature drift, missing-value spike, volume drop, latency "
                    "and error-rate spikes) on the window. Exit 0 when none fires, 1 when any "
                    "fires, 2 on bad input. With a webhook, POST the same JSON (3 attempts at "
                    "most, 5 s timeout each); a failing webhook is reported, the exit code stays.")
    _add_analysis_options(parser)
    parser.add_argument("--reference", metavar="A..B",
                        help="reference window (default: [reference] in the config, else the "
                             "first third of the log's days)")
    parser.add_argument("--webhook", metavar="URL",
                        help="POST the result to this http(s) URL (default: [alerts_webhook] url)")
    parser.add_argument("--webhook-send", choices=("fired", "always"), default=None,
                        help="POST only when an alert fires (default) or on every run")
    parser.set_defaults(handler=_cmd_check)


def _cmd_check(args) -> Result:
    from mlmon_core import alerts, sql
    from mlmon_core.config import load_config
    from mlmon_core.source import open_log
    from mlmon_core.windows import reference_window

    config = load_config(args.config)
    hook = alerts.webhook_target(config, args.webhook, args.webhook_send)
    alerts.load_rules(config)  # a bad rule fails before the log is opened
    alerts.default_names(config)
    view = open_log(config)
    segment = segment_of(args, view)
    window = window_of(view, args.window)
    reference = sql.parse_window(args.reference, "--reference") if args.reference \
        else reference_window(view)
    result = alerts.evaluate_alerts(view, window, reference, segment)
    payload = to_jsonable(result.to_json())
    text = result.to_text()
    outcome = None
    if hook is not None:  # the receiver gets the payload itself; the output adds how that went
        outcome = alerts.deliver(hook, payload, fired=bool(result.fired))
        if outcome.get("error"):
            print(f"mlmon check: webhook {outcome['url']} failed after {outcome['attempts']} "
                  f"attempt(s): {outcome['error']}", file=sys.stderr)
        elif outcome.get("sent"):
            text += f"\nwebhook: POSTed to {outcome['url']} (HTTP {outcome['status']})"
    payload["webhook"] = outcome
    return Result(payload, text, EXIT_ALERT if result.fired else EXIT_OK)


# ---------------------------------------------------------------- report

def _add_report(sub) -> None:
    parser = sub.add_parser(
        "report", help="a self-contained HTML report for stakeholders (opens without a network)",
        description="Write one HTML file a product manager can forward: a summary in plain words, "
                    "headline quality against the reference, its trend, the weakest segments and "
                    "those that got worse with their sizes, data problems, drift, what changed, "
                    "service health and fired alerts, and how the numbers were computed. Charts "
                    "are Vega-Lite, drawn by JavaScript embedded in the file. Without --model, a "
                    "log of several models is reported for the one with the most rows in the "
                    "window.")
    _add_analysis_options(parser)
    parser.add_argument("--reference", metavar="A..B",
                        help="reference window (default: [reference] in the config, else the "
                             "first third of the log's days)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the HTML file to write (replaced atomically)")
    parser.add_argument("--title", help="the report's title (default: model and window)")
    parser.set_defaults(handler=_cmd_report)


def _cmd_report(args) -> Result:
    from mlmon_core import report

    report.check_output_path(args.out)
    reference = optional_window(args.reference, "--reference")
    view = open_view(args)
    window = window_of(view, args.window)
    if args.model is None and not _filters_model(args, view):
        args.model = report.default_model(view, window)
    segment = segment_of(args, view)
    progress = _progress_printer()
    written = report.write_report(view, window, args.out, reference, segment, progress,
                                  title=args.title)
    if progress is not None:
        print(file=sys.stderr)
    result = written.report
    lines = [f"report written: {written.path} ({written.bytes / 1e6:.1f} MB, "
             f"{len(result.sections)} sections)", f"{report.STATUS_WORDS[result.status]}:"]
    lines += [f"  - {sentence}" for sentence in result.summary]
    return Result(written.to_json(), "\n".join(lines))


def _filters_model(args, view) -> bool:
    """Whether ``--where`` already picks rows by the model column (then no default model is
    added: ``model_version == 'v2'`` and the default ``v1`` would leave no row)."""
    from mlmon_core import sql

    model = view.roles.model
    return bool(model) and any(c.column == model for c in sql.parse_wheres(args.where))


def _progress_printer():
    """A progress line on stderr when it is a terminal (long reports), else None."""
    if not sys.stderr.isatty():
        return None

    def show(fraction: float, message: str) -> None:
        print(f"\r{fraction:4.0%} {message[:70]:<70}", end="", file=sys.stderr, flush=True)

    return show


_COMMANDS: list[Callable] = [_add_demo, _add_app, _add_ingest, _add_schema, _add_metrics,
                             _add_estimate,
                             _add_service, _add_slices, _add_compare_models, _add_ab,
                             _add_explain, _add_explain_row, _add_quality, _add_drift, _add_segment,
                             _add_label_queue, _add_check, _add_report]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(prog="mlmon", description="Root-cause analysis for ML models in production.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def _print(result: Result, as_json: bool) -> None:
    if as_json or result.text is None:
        print(json.dumps(to_jsonable(result.payload), indent=None if as_json else 2))
    else:
        print(result.text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlmon`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except MlmonError as exc:
        print(f"mlmon {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, not bad input: never confuse it with exit 1 (alert fired)
        print(f"mlmon {args.command}: internal error ({type(exc).__name__}: {exc}); "
              "please report it with the command that caused it", file=sys.stderr)
        return EXIT_INTERNAL
    try:
        _print(result, getattr(args, "json", False))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `mlmon metrics --json | head`: the reader left, not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
