"""Alerts that can trigger actions: rules over the analyses, evaluated by ``mlmon check``.

A rule compares one number of a window with a threshold: a metric of ``metrics.py`` or a check
(drift, missing values, new categories, out-of-range values, volume, label coverage, estimated
quality, latency, error rate), optionally for a segment (``where``). The threshold is absolute, or
relative to the same number in the reference window (``relative = -0.05``: 5 % below it). Rules
come from ``[[alerts]]`` tables in mlmon.toml and are validated here into ``AlertRule``; errors
name the file, the table's position and the key.

Built-in defaults (on unless ``[alerts_defaults] enabled = false``; single ones can be turned off
with ``disable = [...]``) watch what matters without any configuration. Each is designed to stay
quiet on data that did not change: a default needs a large effect and, where the number is a noisy
estimate (a metric, a rate), clear statistical evidence too; never a p-value alone.

``quality_drop``
    For the two headline metrics (``metrics.headline_metrics``): the window's value is worse than
    the reference's by the z test of ``health.compare_metric`` at ``ALPHA`` (1 %, not 5 %: a cron
    job that tests two metrics every day at 5 % raises a false alarm about every ten days) **and**
    lies beyond the reference's 95 % CI.
``estimated_quality_drop``
    Where labels are missing (binary classifiers with a score): the same test for the CBPE estimate
    (``estimate.estimate_performance``) of accuracy and ROC AUC on the window's unlabeled rows,
    against the realized reference value, using the estimate's band as its uncertainty.
``dataset_drift``
    ``drift.compute_drift`` says dataset drift (the share of drifted columns reaches
    ``[drift] dataset_share``).
``feature_drift``
    At least one feature drifted beyond sampling noise. Distance tests (Wasserstein,
    Jensen-Shannon, PSI) are effect sizes: a drifted one counts only when its distance is above
    its sampling-noise level (``ColumnDrift.beyond_noise``: with many values and few rows these
    distances pass 0.1 with no drift at all); p-value tests (KS, chi-square, z, used up to 1000 reference rows)
    are Bonferroni-corrected over the features tested, so that twenty features do not mean a 64 %
    chance of a false alarm. A threshold set in ``[drift.columns]`` is used as it is.
``missing_spike``
    A feature, the prediction or the score is missing in at least 5 points more of the rows than in
    the reference, or in every row (a medium or high ``missing`` finding of ``quality.py``). Late
    labels are not a missing-value spike: the target is left to the label rules.
``volume_drop``
    Fewer than half the expected rows (the reference's rows per day times the window's days).
``latency_spike``
    Latency p95 above twice the reference's (with at least ``MIN_LATENCY_ROWS`` latencies).
``error_rate_spike``
    Error rate above twice the reference's and at least 1 point above it, with a one-sided
    two-proportion z test at ``ALPHA``.

Every evaluated rule becomes an ``Alert`` (fired or not) with its value, threshold, reference value
and a message in plain words. A rule whose number cannot be computed (no labels, an empty
reference...) is *skipped* with the reason and never fires. ``CheckResult.advice`` turns what fired
into the answer a manager wants: retrain, fix the data first, watch, or nothing to do.
``send_webhook`` POSTs the result (bounded retries and time; a failure is recorded, not raised).
"""

from __future__ import annotations

import difflib
import json
import math
import operator
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from mlmon_core import sql
from mlmon_core.config import Config, Window, webhook_url_problem
from mlmon_core.errors import ConfigError, MlmonError, NotComputableError
from mlmon_core.sql import Segment

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
OP_WORDS = {"<": "below", "<=": "at or below", ">": "above", ">=": "at or above"}
SEVERITIES = ("high", "medium", "low")
DEFAULT_SEVERITY = "medium"
RULE_KEYS = ("name", "metric", "check", "op", "threshold", "relative", "column", "where",
             "severity")

ALPHA = 0.01
HEADLINE_COUNT = 2
ESTIMATED_METRICS = ("accuracy", "roc_auc")
FEATURE_DRIFT_ALPHA = 0.05
MISSING_RISE = 0.05
VOLUME_DROP = 0.5
LATENCY_RATIO = 2.0
MIN_LATENCY_ROWS = 100
ERROR_RATE_RATIO = 2.0
ERROR_RATE_RISE = 0.01

WEBHOOK_TIMEOUT = 5.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF = 0.5
WEBHOOK_BUDGET = 20.0
_RETRY_STATUSES = (408, 425, 429)


# ---------------------------------------------------------------- what a rule can measure

@dataclass(frozen=True)
class CheckSpec:
    """What a check measures and how a rule on it may be written."""

    category: str            # quality | drift | data | labels | service
    column: str              # "required", "optional" or "none"
    relative: bool           # whether the reference has the same number
    kind: str                # how values read: metric | share | rows | ms | flag
    description: str
    default_comparison: tuple[str, float] | None = None


CHECKS: dict[str, CheckSpec] = {
    "dataset_drift": CheckSpec("drift", "none", False, "flag",
                               "1 when the share of drifted columns reaches [drift] dataset_share",
                               (">=", 1.0)),
    "drift": CheckSpec("drift", "required", False, "flag",
                       "1 when the column's drift test says drift beyond sampling "
                       "noise", (">=", 1.0)),
    "drift_share": CheckSpec("drift", "none", False, "share",
                             "share of tested columns that drifted"),
    "missing_share": CheckSpec("data", "optional", True, "share",
                               "share of rows where the column is missing (without a column: "
                               "the worst feature, prediction or score)"),
    "new_categories": CheckSpec("data", "optional", False, "share",
                                "share of rows holding a category never seen in the reference "
                                "(without a column: the worst categorical feature)"),
    "out_of_range_share": CheckSpec("data", "optional", False, "share",
                                    "share of values outside the reference's [min, max] (without "
                                    "a column: the worst numerical feature)"),
    "volume": CheckSpec("data", "none", True, "rows",
                        "rows in the window; its reference value is the expected count (the "
                        "reference's rows per day times the window's days)"),
    "label_coverage": CheckSpec("labels", "none", True, "share", "share of rows with a label"),
    "latency_p50": CheckSpec("service", "none", True, "ms", "median latency"),
    "latency_p95": CheckSpec("service", "none", True, "ms", "95th percentile of latency"),
    "latency_p99": CheckSpec("service", "none", True, "ms", "99th percentile of latency"),
    "error_rate": CheckSpec("service", "none", True, "share",
                            "share of rows whose status is an error"),
    **{f"estimated_{name}": CheckSpec("quality", "none", True, "metric",
                                      f"{name} estimated from calibrated scores on the window's "
                                      "unlabeled rows (binary classifiers); its reference value "
                                      "is the realized one")
       for name in ("accuracy", "precision", "recall", "f1", "roc_auc")},
}

# The column kinds each column check reads (missing_share: any column).
_COLUMN_KINDS = {"missing_share": None, "new_categories": ("categorical", "boolean"),
                 "out_of_range_share": ("numerical",),
                 "drift": ("numerical", "categorical", "boolean")}


def metric_names() -> set[str]:
    """Every metric name ``metrics.py`` computes for some task (per-class ones are patterns)."""
    from mlmon_core.metrics import BINARY_METRICS, REGRESSION_METRICS

    return set(BINARY_METRICS) | set(REGRESSION_METRICS) | {"macro_f1", "weighted_f1"}


_PER_CLASS = re.compile(r"^(precision|recall)\[.+\]$")


# ---------------------------------------------------------------- rules

@dataclass(frozen=True)
class AlertRule:
    """One validated ``[[alerts]]`` table (``index`` counts from 1 in file order)."""

    index: int
    name: str
    op: str
    metric: str | None = None
    check: str | None = None
    threshold: float | None = None
    relative: float | None = None
    column: str | None = None
    where: str | None = None
    segment: Segment = ()
    severity: str = DEFAULT_SEVERITY
    source: str = "<config>"

    @property
    def id(self) -> str:
        """``alerts#N``: how the output names this rule."""
        return f"alerts#{self.index}"

    @property
    def measure(self) -> str:
        """The metric or check name."""
        return self.metric or self.check or ""

    @property
    def category(self) -> str:
        """quality, drift, data, labels or service."""
        return "quality" if self.metric else CHECKS[self.check].category

    def fail(self, key: str, problem: str) -> ConfigError:
        """A configuration error naming the file, this rule and the key."""
        return ConfigError(f"{self.source}: [[alerts]] #{self.index} ({self.name}): {key}: "
                           f"{problem}")

    def to_json(self) -> dict[str, Any]:
        """The rule as written (validated)."""
        out = {"rule": self.id, "name": self.name, "op": self.op, "severity": self.severity}
        for key in ("metric", "check", "threshold", "relative", "column", "where"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def parse_rules(items: Iterable[Mapping[str, Any]],
                source: str = "<config>") -> tuple[AlertRule, ...]:
    """Validate ``[[alerts]]`` tables into rules; ``ConfigError`` names the file, #index and key."""
    return tuple(_parse_rule(item, index, source) for index, item in enumerate(items, start=1))


def load_rules(config: Config) -> tuple[AlertRule, ...]:
    """The config's ``[[alerts]]`` rules, validated."""
    return parse_rules(config.alerts, str(config.path or "<config>"))


def _parse_rule(item: Mapping[str, Any], index: int, source: str) -> AlertRule:
    where = f"{source}: [[alerts]] #{index}"

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {problem}")

    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a table, got {item!r}")
    for key in item:
        if key not in RULE_KEYS:
            close = difflib.get_close_matches(str(key), RULE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed keys are: "
                              f"{', '.join(RULE_KEYS)}")
    text = {key: _text(item, key, fail) for key in ("name", "metric", "check", "op", "column",
                                                   "where", "severity")}
    metric, check = text["metric"], text["check"]
    if (metric is None) == (check is None):
        raise fail("metric", "give exactly one of metric = \"accuracy\" (any metric of mlmon "
                             "metrics) or check = \"dataset_drift\" (one of "
                             f"{', '.join(CHECKS)})")
    if metric is not None and metric not in metric_names() and not _PER_CLASS.match(metric):
        close = difflib.get_close_matches(metric, sorted(metric_names()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise fail("metric", f"{metric!r} is not a metric{hint}; metrics are "
                             f"{', '.join(sorted(metric_names()))}, precision[CLASS], "
                             "recall[CLASS]")
    spec = CHECKS.get(check) if check is not None else None
    if check is not None and spec is None:
        close = difflib.get_close_matches(check, list(CHECKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise fail("check", f"{check!r} is not a check{hint}; checks are {', '.join(CHECKS)}")
    threshold, relative = _number(item, "threshold", fail), _number(item, "relative", fail)
    op = text["op"]
    if threshold is not None and relative is not None:
        raise fail("relative", "threshold and relative exclude each other: give one")
    if relative is not None and spec is not None and not spec.relative:
        raise fail("relative", f"check {check!r} has no reference value to be relative to; "
                               "use threshold")
    if threshold is None and relative is None:
        if spec is None or spec.default_comparison is None:
            raise fail("threshold", "give threshold = NUMBER (absolute) or relative = FRACTION "
                                    "(of the reference value, e.g. -0.05)")
        default_op, threshold = spec.default_comparison
        op = op or default_op
    if op is None:
        raise fail("op", f"give op = one of {', '.join(OPS)}")
    if op not in OPS:
        raise fail("op", f"{op!r} is not one of {', '.join(OPS)}")
    column = text["column"]
    if column is not None and (spec is None or spec.column == "none"):
        raise fail("column", f"only the column checks take a column "
                             f"({', '.join(c for c, s in CHECKS.items() if s.column != 'none')})")
    if column is None and spec is not None and spec.column == "required":
        raise fail("column", f"check {check!r} needs column = \"NAME\"")
    severity = text["severity"] or DEFAULT_SEVERITY
    if severity not in SEVERITIES:
        raise fail("severity", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
    try:
        segment = sql.parse_where(text["where"])
    except MlmonError as exc:
        raise fail("where", str(exc)) from None
    rule = AlertRule(index=index, name="", op=op, metric=metric, check=check, threshold=threshold,
                     relative=relative, column=column, where=text["where"], segment=segment,
                     severity=severity, source=source)
    return _with_name(rule, text["name"])


def _text(item: Mapping[str, Any], key: str, fail) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _number(item: Mapping[str, Any], key: str, fail) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"expected a finite number, got {value!r}")
    return float(value)


def _with_name(rule: AlertRule, name: str | None) -> AlertRule:
    from dataclasses import replace

    if name:
        return replace(rule, name=name)
    subject = rule.measure + (f" of {rule.column}" if rule.column else "")
    if rule.where:
        subject += f" for {sql.describe_segment(rule.segment)}"
    if rule.relative is not None:
        bound = f"reference {rule.relative:+.0%}"
    else:
        bound = f"{rule.threshold:g}"
    return replace(rule, name=f"{subject} {rule.op} {bound}")


def check_rules(view, rules: Iterable[AlertRule]) -> None:
    """Check rules against the log: columns exist and have the right kind, metrics fit the task,
    segments compile. Raises ``ConfigError`` naming the rule and key (bad input, exit code 2)."""
    from mlmon_core.metrics import BINARY_METRICS, REGRESSION_METRICS

    by_task = {"binary": set(BINARY_METRICS), "regression": set(REGRESSION_METRICS),
               "multiclass": {"accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"}}
    for rule in rules:
        if rule.metric is not None:
            fits = rule.metric in by_task[view.task] or (
                view.task == "multiclass" and _PER_CLASS.match(rule.metric))
            if not fits:
                choices = ", ".join(sorted(by_task[view.task]))
                raise rule.fail("metric", f"{rule.metric!r} is not a metric of a {view.task} "
                                          f"model; use one of {choices}")
        if rule.column is not None:
            if rule.column not in view.columns:
                raise rule.fail("column", f"no column {rule.column!r} in the log")
            kinds = _COLUMN_KINDS.get(rule.check)
            if kinds and view.kind(rule.column) not in kinds:
                raise rule.fail("column", f"check {rule.check!r} needs a "
                                          f"{' or '.join(kinds)} column; {rule.column!r} is "
                                          f"{view.kind(rule.column)}")
        try:
            sql.compile_segment(rule.segment, view.column_types)
        except MlmonError as exc:
            raise rule.fail("where", str(exc)) from None


# ---------------------------------------------------------------- defaults

DEFAULTS: dict[str, tuple[str, str, str]] = {
    # name: (title, category, severity)
    "quality_drop": ("quality drop", "quality", "high"),
    "estimated_quality_drop": ("estimated quality drop", "quality", "medium"),
    "dataset_drift": ("dataset drift", "drift", "high"),
    "feature_drift": ("feature drift", "drift", "medium"),
    "missing_spike": ("missing-value spike", "data", "high"),
    "volume_drop": ("volume drop", "data", "high"),
    "latency_spike": ("latency spike", "service", "medium"),
    "error_rate_spike": ("error-rate spike", "service", "high"),
}


def default_names(config: Config) -> tuple[str, ...]:
    """The built-in alerts the config leaves on (``[alerts_defaults]``)."""
    settings = config.alerts_defaults
    unknown = [name for name in settings.disable if name not in DEFAULTS]
    if unknown:
        raise ConfigError(f"{config.path or '<config>'}: [alerts_defaults] disable: unknown "
                          f"default alert {unknown[0]!r}; the defaults are {', '.join(DEFAULTS)}")
    if not settings.enabled:
        return ()
    return tuple(name for name in DEFAULTS if name not in settings.disable)


# ---------------------------------------------------------------- outcomes

@dataclass(frozen=True)
class Alert:
    """One evaluated rule: fired or not, or skipped (``reason`` set) when it cannot be computed.

    ``summary`` is the short phrase the retrain advice quotes ("accuracy fell beyond the
    reference's 95% CI").
    """

    rule: str
    name: str
    category: str
    severity: str
    fired: bool
    message: str
    metric: str | None = None
    check: str | None = None
    column: str | None = None
    segment: str | None = None
    op: str | None = None
    value: float | None = None
    threshold: float | None = None
    reference_value: float | None = None
    reason: str | None = None
    summary: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        """Whether the rule could not be evaluated."""
        return self.reason is not None

    def to_json(self) -> dict[str, Any]:
        """``{rule, name, metric|check, column?, segment?, op, value, threshold, reference_value?,
        severity, category, message, fired, reason?, details?}``."""
        out: dict[str, Any] = {"rule": self.rule, "name": self.name}
        for key in ("metric", "check", "column", "segment"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(op=self.op, value=_finite(self.value), threshold=_finite(self.threshold))
        if self.reference_value is not None:
            out["reference_value"] = _finite(self.reference_value)
        out.update(severity=self.severity, category=self.category, message=self.message,
                   fired=self.fired)
        if self.reason is not None:
            out["reason"] = self.reason
        if self.details:
            out["details"] = self.details
        return out


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Advice:
    """The answer to "retrain?": ``action`` is retrain, fix (data or service first), watch or ok."""

    recommended: bool
    action: str
    reasons: list[str]
    text: str

    def to_json(self) -> dict[str, Any]:
        """``{recommended, action, reasons}``."""
        return {"recommended": self.recommended, "action": self.action, "reasons": self.reasons}


@dataclass
class CheckResult:
    """Every rule evaluated on one window against the reference."""

    window: Window
    reference: Window
    segment: Segment
    rows: int
    labeled_rows: int
    alerts: list[Alert]
    skipped: list[Alert]
    advice: Advice
    seconds: float = 0.0

    @property
    def fired(self) -> list[Alert]:
        """The alerts that fire, most severe first."""
        return [a for a in self.alerts if a.fired]

    @property
    def summary(self) -> str:
        """One paragraph in plain words (the retrain advice)."""
        return self.advice.text

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon check --json`` object (``webhook`` is added by the caller)."""
        return {
            "window": self.window.to_json(), "reference": self.reference.to_json(),
            "segment": sql.segment_to_json(self.segment),
            "segment_text": sql.describe_segment(self.segment),
            "rows": self.rows, "labeled_rows": self.labeled_rows,
            "fired": len(self.fired), "evaluated": len(self.alerts),
            "alerts": [a.to_json() for a in self.alerts],
            "skipped": [a.to_json() for a in self.skipped],
            "summary": self.summary, "retrain": self.advice.to_json(),
            "seconds": round(self.seconds, 3),
        }

    def to_text(self) -> str:
        """A few lines for the terminal."""
        lines = [f"{len(self.fired)} of {len(self.alerts)} alert rules fire for {self.window} "
                 f"({sql.describe_segment(self.segment)}; reference {self.reference})",
                 self.summary]
        lines += [f"  [{a.severity}] {a.name}: {a.message}" for a in self.fired]
        lines += [f"  skipped {a.name}: {a.reason}" for a in self.skipped]
        return "\n".join(lines)


# ---------------------------------------------------------------- the analyses, computed once

Runner = Callable[..., Any]


def call_directly(view) -> Runner:
    """The default runner: ``runner("module:function", *args, **kwargs)`` calls
    ``function(view, *args, **kwargs)``."""
    import importlib

    def runner(function: str, *args: Any, **kwargs: Any) -> Any:
        module, name = function.split(":")
        return getattr(importlib.import_module(module), name)(view, *args, **kwargs)

    return runner


class _Analyses:
    """The analyses the rules read, each computed at most once per segment.

    Every analysis goes through ``runner`` with the same arguments the app's pages use, so that
    the app can route them through its cache and share them with the other sections (the drift
    report the Overview shows is the one the alerts read).
    """

    def __init__(self, view, window: Window, reference: Window, segment: Segment,
                 runner: Runner | None = None):
        self.view, self.window, self.reference, self.segment = view, window, reference, segment
        self.run = runner or call_directly(view)
        self._memo: dict[tuple, Any] = {}

    def _once(self, key: tuple, function: str, *args: Any, **kwargs: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = self.run(function, *args, **kwargs)
        return self._memo[key]

    def _window(self, side: str) -> Window:
        return self.window if side == "window" else self.reference

    def metrics(self, side: str, segment: Segment):
        """``compute_metrics`` of the window or the reference."""
        return self._once(("metrics", side, segment), "mlmon_core.metrics:compute_metrics",
                          self._window(side), segment)

    def drift(self, segment: Segment, column: str | None = None):
        """``compute_drift`` of the default columns (or of one other column)."""
        from mlmon_core.drift import drift_columns

        if column is not None and column not in drift_columns(self.view):
            return self._once(("drift", segment, column), "mlmon_core.drift:compute_drift",
                              self.window, self.reference, segment, columns=(column,))
        return self._once(("drift", segment, None), "mlmon_core.drift:compute_drift",
                          self.window, self.reference, segment)

    def quality(self, segment: Segment):
        """``check_quality`` of the window against the reference."""
        return self._once(("quality", segment), "mlmon_core.quality:check_quality",
                          self.window, self.reference, segment)

    def estimate(self, segment: Segment):
        """CBPE estimate of the window's unlabeled rows, calibrated on the reference."""
        return self._once(("estimate", segment), "mlmon_core.estimate:estimate_performance",
                          self.window, segment, bucket=None, reference=self.reference)

    def service(self, side: str, segment: Segment) -> dict[str, Any]:
        """Service health numbers of the window or the reference (the whole-window entry)."""
        return self._once(("service", side, segment), "mlmon_core.service:service_health",
                          self._window(side), segment).window


class _Skip(Exception):
    """A rule cannot be evaluated: the message is the reason."""


# ---------------------------------------------------------------- entry point

def evaluate_alerts(view, window: Window, reference: Window | None = None, segment: Segment = (),
                    rules: Iterable[AlertRule] | None = None,
                    defaults: bool | Iterable[str] | None = None,
                    runner: Runner | None = None) -> CheckResult:
    """Evaluate alert rules on ``window`` against ``reference``, both within ``segment``.

    ``rules`` defaults to the config's ``[[alerts]]``; ``defaults`` is None (the config decides),
    True (all built-in alerts), False (none) or the names of the built-ins to run. A rule's own
    ``where`` is added to ``segment``. Bad rules raise ``ConfigError``; data conditions never
    raise (the rule is skipped with the reason). ``runner("module:function", *args, **kwargs)``
    computes each analysis (default: ``call_directly(view)``); the app passes its cached one.
    """
    from mlmon_core.windows import reference_window

    started = time.perf_counter()
    reference = reference if reference is not None else reference_window(view)
    segment = tuple(segment or ())
    rules = tuple(rules) if rules is not None else load_rules(view.config)
    if defaults is None:
        names = default_names(view.config)
    elif isinstance(defaults, bool):
        names = tuple(DEFAULTS) if defaults else ()
    else:
        names = tuple(defaults)
        unknown = [n for n in names if n not in DEFAULTS]
        if unknown:
            raise ConfigError(f"unknown default alert {unknown[0]!r}; the defaults are "
                              f"{', '.join(DEFAULTS)}")
    check_rules(view, rules)
    analyses = _Analyses(view, window, reference, segment, runner)
    outcomes: list[Alert] = []
    for name in names:
        outcomes.extend(_guarded_default(name, analyses))
    for rule in rules:
        outcomes.append(_guarded_rule(rule, analyses))
    evaluated = [a for a in outcomes if not a.skipped]
    order = {s: i for i, s in enumerate(SEVERITIES)}
    evaluated.sort(key=lambda a: (not a.fired, order[a.severity] if a.fired else 0))
    current = analyses.metrics("window", segment)
    result = CheckResult(window, reference, segment, current.rows, current.labeled_rows,
                         evaluated, [a for a in outcomes if a.skipped], Advice(False, "ok", [], ""))
    result.advice = advise(result)
    result.seconds = time.perf_counter() - started
    return result


def _guarded_default(name: str, analyses: _Analyses) -> list[Alert]:
    title, category, severity = DEFAULTS[name]
    try:
        return _DEFAULT_EVALUATORS[name](analyses)
    except _Skip as skip:
        return [_skipped(f"default:{name}", title, category, severity, str(skip), check=name)]
    except NotComputableError as exc:
        return [_skipped(f"default:{name}", title, category, severity,
                         f"not computable because {exc}", check=name)]
    except MlmonError:
        raise  # bad input or configuration: exit code 2, never a silent "no alert"
    except Exception as exc:  # noqa: BLE001 - an alert run must report, not crash (exit 1 = fired)
        return [_skipped(f"default:{name}", title, category, severity,
                         f"not computable because of an internal error ({type(exc).__name__}: "
                         f"{exc})", check=name)]


def _guarded_rule(rule: AlertRule, analyses: _Analyses) -> Alert:
    try:
        return _evaluate_rule(rule, analyses)
    except _Skip as skip:
        reason = str(skip)
    except NotComputableError as exc:
        reason = f"not computable because {exc}"
    except MlmonError:
        raise
    except Exception as exc:  # noqa: BLE001 - see _guarded_default
        reason = f"not computable because of an internal error ({type(exc).__name__}: {exc})"
    return _skipped(rule.id, rule.name, rule.category, rule.severity, reason, metric=rule.metric,
                    check=rule.check, column=rule.column, segment=_segment_text(rule.segment),
                    op=rule.op)


def _skipped(rule: str, name: str, category: str, severity: str, reason: str, **fields) -> Alert:
    if not reason.startswith(("not ", "in the reference")):
        reason = "not computable because " + reason
    return Alert(rule=rule, name=name, category=category, severity=severity, fired=False,
                 message=f"{name}: {reason}", reason=reason, **fields)


def _segment_text(segment: Segment) -> str | None:
    return sql.describe_segment(segment) if segment else None


# ---------------------------------------------------------------- user rules

def _evaluate_rule(rule: AlertRule, analyses: _Analyses) -> Alert:
    segment = analyses.segment + tuple(rule.segment)
    if rule.metric is not None:
        measured = _metric_value(rule.metric, analyses, segment)
    else:
        measured = _CHECK_READERS[rule.check](rule, analyses, segment)
    value, reference_value, column, details = measured
    threshold = rule.threshold
    if rule.relative is not None:
        if reference_value is None:
            raise _Skip(f"not computable because the reference value of {rule.measure} is unknown "
                        f"({details.pop('reference_reason', 'no reference value')})")
        threshold = reference_value * (1.0 + rule.relative)
    details.pop("reference_reason", None)
    fired = OPS[rule.op](value, threshold)
    message = _rule_message(rule, value, threshold, reference_value, column, fired, details)
    return Alert(rule=rule.id, name=rule.name, category=rule.category, severity=rule.severity,
                 fired=fired, message=message, metric=rule.metric, check=rule.check, column=column,
                 segment=_segment_text(rule.segment), op=rule.op, value=value, threshold=threshold,
                 reference_value=reference_value, summary=message if fired else None,
                 details=details)


Measured = tuple[float, float | None, str | None, dict[str, Any]]


def _metric_value(name: str, analyses: _Analyses, segment: Segment) -> Measured:
    current = analyses.metrics("window", segment).metrics.get(name)
    if current is None:
        raise _Skip(f"not computable because the window has no {name} (its class does not occur)")
    if current.value is None:
        raise _Skip(current.reason or f"not computable because {name} has no value")
    before = analyses.metrics("reference", segment).metrics.get(name)
    details: dict[str, Any] = {"n": current.n, "ci_low": current.ci_low, "ci_high": current.ci_high}
    reference_value = before.value if before is not None else None
    if reference_value is None:
        details["reference_reason"] = before.reason if before is not None else "not computed"
    return float(current.value), reference_value, None, details


def _read_flag_drift(rule: AlertRule, analyses: _Analyses, segment: Segment) -> Measured:
    drift = analyses.drift(segment)
    if rule.check == "dataset_drift":
        if drift.dataset_drift is None:
            raise _Skip(drift.reason or "not computable because no column could be tested")
        return (1.0 if drift.dataset_drift else 0.0), None, None, {
            "drift_share": drift.drift_share, "drifted_columns": drift.drifted_columns}
    if drift.drift_share is None:
        raise _Skip(drift.reason or "not computable because no column could be tested")
    return float(drift.drift_share), None, None, {"drifted_columns": drift.drifted_columns}


def _read_column_drift(rule: AlertRule, analyses: _Analyses, segment: Segment) -> Measured:
    result = analyses.drift(segment, rule.column).column(rule.column)
    if not result.computable:
        raise _Skip(result.reason or f"not computable because {rule.column} could not be tested")
    return (1.0 if result.drifted_beyond_noise else 0.0), None, rule.column, {
        "test": result.test, "statistic": result.statistic, "p_value": result.p_value,
        "test_threshold": result.threshold, "noise_level": result.noise_level,
        "within_noise": result.drifted_within_noise}


def _input_columns(view) -> list[str]:
    roles = view.roles
    return list(roles.features) + [c for c in (roles.prediction, roles.score) if c]


_QUALITY_FIELDS = {"missing_share": ("missing_share", "reference_missing_share"),
                   "new_categories": ("new_category_share", None),
                   "out_of_range_share": ("out_of_range_share", None)}


def _read_column_quality(rule: AlertRule, analyses: _Analyses, segment: Segment) -> Measured:
    quality = analyses.quality(segment)
    if quality.rows == 0:
        raise _Skip(f"not computable because the window {analyses.window} has no rows")
    field_name, reference_field = _QUALITY_FIELDS[rule.check]
    by_name = {c.column: c for c in quality.columns}
    names = [rule.column] if rule.column else [c for c in _input_columns(analyses.view)
                                               if c in by_name]
    candidates = []
    for name in names:
        value = getattr(by_name[name], field_name)
        if value is None:
            continue
        reference_value = getattr(by_name[name], reference_field) if reference_field else None
        if rule.relative is not None and reference_value is None:
            continue
        threshold = rule.threshold if rule.relative is None or reference_value is None \
            else reference_value * (1.0 + rule.relative)
        margin = (value - threshold) if rule.op in (">", ">=") else (threshold - value)
        candidates.append((margin, name, float(value), reference_value))
    if not candidates:
        what = rule.column or "any input column"
        raise _Skip(f"not computable because {rule.check} of {what} needs reference values "
                    f"(and rows) to compare with")
    candidates.sort(key=lambda c: -c[0])
    _, name, value, reference_value = candidates[0]
    details: dict[str, Any] = {}
    if not rule.column:
        details["columns_checked"] = len(candidates)
    column = by_name[name]
    if rule.check == "new_categories" and column.new_categories:
        details["new_categories"] = column.new_categories[:10]
    if rule.check == "out_of_range_share" and column.reference_range:
        details["reference_range"] = list(column.reference_range)
    return value, reference_value, name, details


def _read_volume(rule: AlertRule, analyses: _Analyses, segment: Segment) -> Measured:
    quality = analyses.quality(segment)
    details = {"expected_rows_method": quality.expected_rows_method}
    if quality.expected_rows is None:
        details["reference_reason"] = quality.expected_rows_method
    return float(quality.rows), quality.expected_rows, None, details


def _read_label_coverage(rule: AlertRule, analyses: _Analyses, segment: Segment) -> Measured:
    if analyses.view.roles.target is None:
        raise _Skip("not computable because the log has no target column (labels)")
    current = analyses.metrics("window", segment)
    if not current.rows:
        raise _Skip(f"not computable because the window {analyses.window} has no rows")
    before = analyses.metrics("reference", segment)
    reference_value = before.labeled_rows / before.rows if before.rows else None
    details: dict[str, Any] = {"rows": current.rows, "labeled_rows": current.labeled_rows}
    if reference_value is None:
        details["reference_reason"] = "the reference window has no rows"
    return current.labeled_rows / current.rows, reference_value, None, details


def _read_service(rule: AlertRule, analyses: _Analyses, segment: Segment) -> Measured:
    now = analyses.service("window", segment)
    value = now.get(rule.check)
    if value is None:
        raise _Skip(now.get("reasons", {}).get(rule.check, f"not computable: no {rule.check}"))
    before = analyses.service("reference", segment)
    details: dict[str, Any] = {}
    if before.get(rule.check) is None:
        details["reference_reason"] = before.get("reasons", {}).get(rule.check, "no value")
    return float(value), before.get(rule.check), None, details


def _read_estimated(rule: AlertRule, analyses: _Analyses, segment: Segment) -> Measured:
    metric = rule.check.removeprefix("estimated_")
    estimate = analyses.estimate(segment)
    cell = estimate.window.get(metric) or {}
    if cell.get("value") is None:
        raise _Skip(cell.get("reason") or estimate.reason or "not computable")
    before = analyses.metrics("reference", segment).metrics.get(metric)
    details: dict[str, Any] = {"ci_low": cell.get("ci_low"), "ci_high": cell.get("ci_high"),
                               "unlabeled_rows": estimate.counts.get("unlabeled_rows")}
    reference_value = before.value if before is not None else None
    if reference_value is None:
        details["reference_reason"] = before.reason if before is not None else "not computed"
    return float(cell["value"]), reference_value, None, details


_CHECK_READERS: dict[str, Callable[[AlertRule, _Analyses, Segment], Measured]] = {
    "dataset_drift": _read_flag_drift, "drift_share": _read_flag_drift,
    "drift": _read_column_drift,
    "missing_share": _read_column_quality, "new_categories": _read_column_quality,
    "out_of_range_share": _read_column_quality,
    "volume": _read_volume, "label_coverage": _read_label_coverage,
    "latency_p50": _read_service, "latency_p95": _read_service, "latency_p99": _read_service,
    "error_rate": _read_service,
    **{name: _read_estimated for name in CHECKS if name.startswith("estimated_")},
}


def _rule_message(rule: AlertRule, value: float, threshold: float, reference_value: float | None,
                  column: str | None, fired: bool, details: Mapping[str, Any]) -> str:
    if rule.check in ("dataset_drift", "drift"):
        return _flag_message(rule, value, column, details)
    subject = _subject(rule, column)
    shown = _show(rule.measure, value)
    bound = _show(rule.measure, threshold)
    if rule.relative is not None:
        bound += f" (the reference's {_show(rule.measure, reference_value)} {rule.relative:+.0%})"
    elif reference_value is not None:
        shown += f" (reference {_show(rule.measure, reference_value)})"
    if fired:
        return f"{subject} is {shown}, {OP_WORDS[rule.op]} the threshold {bound}"
    return f"{subject} is {shown}, not {OP_WORDS[rule.op]} the threshold {bound}"


def _flag_message(rule: AlertRule, value: float, column: str | None,
                  details: Mapping[str, Any]) -> str:
    from mlmon_core.drift import TEST_NAMES

    where = f" for {sql.describe_segment(rule.segment)}" if rule.segment else ""
    if rule.check == "dataset_drift":
        drifted = details.get("drifted_columns") or []
        share = details.get("drift_share")
        state = "dataset drift" if value >= 1 else "no dataset drift"
        return (f"{state}{where}: {len(drifted)} columns drifted ({_percent(share or 0.0)} of "
                f"those tested){': ' + _names(drifted) if drifted else ''}")
    test = TEST_NAMES.get(details.get("test"), details.get("test"))
    score = details.get("p_value")
    score = details.get("statistic") if score is None else score
    measured = f"{test} {score:.3g}, threshold {details.get('test_threshold'):g}" \
        if score is not None and details.get("test_threshold") is not None else test
    state = "drifted" if value >= 1 else "did not drift"
    if details.get("within_noise"):
        state = (f"did not drift beyond sampling noise (distance {score:.3g} is within the "
                 f"noise level {details.get('noise_level'):.3g} of these sample sizes)")
    return f"{column}{where} {state} ({measured})"


_SUBJECTS = {
    "drift_share": "share of drifted columns",
    "missing_share": "missing share of {column}",
    "new_categories": "share of rows with {column} values never seen in the reference",
    "out_of_range_share": "share of {column} values outside the reference range",
    "volume": "volume", "label_coverage": "label coverage", "error_rate": "error rate",
    "latency_p50": "latency p50", "latency_p95": "latency p95", "latency_p99": "latency p99",
}


def _subject(rule: AlertRule, column: str | None) -> str:
    from mlmon_core.health import label

    if rule.metric:
        subject = label(rule.metric)
    elif rule.check.startswith("estimated_"):
        subject = f"estimated {label(rule.check.removeprefix('estimated_'))} of unlabeled rows"
    else:
        subject = _SUBJECTS[rule.check].format(column=column)
    if rule.segment:
        subject += f" for {sql.describe_segment(rule.segment)}"
    return subject


def _show(measure: str, value: float | None) -> str:
    kind = CHECKS[measure].kind if measure in CHECKS else "metric"
    if value is None:
        return "n/a"
    if kind == "share":
        return _percent(value)
    if kind == "flag":
        return "yes" if value >= 1 else "no"
    if kind == "rows":
        return f"{value:,.0f} rows"
    if kind == "ms":
        return f"{value:,.1f} ms"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.1f}"


def _percent(share: float) -> str:
    if share == 0:
        return "0%"
    if abs(share) < 0.001:
        return "<0.1%"
    return f"{share * 100:.1f}%" if abs(share) < 0.1 else f"{share * 100:.0f}%"


# ---------------------------------------------------------------- built-in alerts

def _default_alert(name: str, fired: bool, message: str, summary: str | None = None,
                   severity: str | None = None, suffix: str = "", shown: str = "",
                   **fields) -> Alert:
    title, category, default_severity = DEFAULTS[name]
    rule = f"default:{name}" + (f":{suffix}" if suffix else "")
    shown = shown or suffix
    return Alert(rule=rule, name=title + (f": {shown}" if shown else ""), category=category,
                 severity=severity or default_severity, fired=fired, message=message,
                 check=name, summary=summary if fired else None, **fields)


def _quality_drop(analyses: _Analyses) -> list[Alert]:
    from mlmon_core.health import LOWER_IS_BETTER, compare_metric, label
    from mlmon_core.metrics import headline_metrics

    now = analyses.metrics("window", analyses.segment)
    before = analyses.metrics("reference", analyses.segment)
    if not now.rows:
        raise _Skip(f"not computable because the window {analyses.window} has no rows (the volume "
                    "alert covers it)")
    if not now.labeled_rows:
        raise _Skip("not computable because no row of the window has a label yet (the estimated "
                    "quality alert judges unlabeled rows)")
    alerts = []
    for name in headline_metrics(now)[:HEADLINE_COUNT]:
        change = compare_metric(name, now.metrics[name], before.metrics[name])
        alerts.append(_judge_drop("quality_drop", name, label(name), change,
                                  name in LOWER_IS_BETTER, change.sentence))
    return alerts


def _judge_drop(default: str, metric: str, shown: str, change, lower_is_better: bool,
                sentence: str, **details) -> Alert:
    """Fired when the change is significantly worse at ``ALPHA`` and beyond the reference's CI."""
    from mlmon_core.health import label

    reference = change.reference
    if change.p_value is None:
        reason = change.sentence.split(": ", 1)[-1]
        return _default_alert(default, False, f"{shown}: {reason}", suffix=metric,
                              shown=label(metric),
                              reason=reason if reason.startswith("not ") else
                              f"not computable because {reason}", metric=metric)
    bound = reference.ci_high if lower_is_better else reference.ci_low
    worse = change.difference > 0 if lower_is_better else change.difference < 0
    beyond = bound is None or (change.current.value > bound if lower_is_better
                               else change.current.value < bound)
    fired = worse and change.p_value < ALPHA and beyond
    ci = (f"{reference.ci_low:.3f}–{reference.ci_high:.3f}"
          if reference.ci_low is not None and reference.ci_high is not None else "unknown")
    if fired:
        message = f"{sentence}, beyond the reference's 95% CI ({ci})"
    elif not worse:
        message = f"{sentence}: not worse than the reference"
    elif change.p_value >= ALPHA:
        message = f"{sentence}: within the noise (not significant at p < {ALPHA:g})"
    else:
        message = f"{sentence}: significant, but within the reference's 95% CI ({ci})"
    verb = "rose" if lower_is_better else "fell"
    return _default_alert(default, fired, message, f"{shown} {verb} beyond the reference's 95% CI",
                          suffix=metric, shown=label(metric), metric=metric,
                          op=">" if lower_is_better else "<",
                          value=change.current.value, threshold=bound,
                          reference_value=reference.value,
                          details={"p_value": change.p_value, "n": change.current.n,
                                   "reference_n": reference.n, "reference_ci_low": reference.ci_low,
                                   "reference_ci_high": reference.ci_high, **details})


def _estimated_quality_drop(analyses: _Analyses) -> list[Alert]:
    from mlmon_core.health import compare_metric, label
    from mlmon_core.metrics import MetricValue

    view = analyses.view
    if view.task != "binary" or not view.roles.score:
        raise _Skip("not computable because estimating quality without labels needs a binary "
                    "classifier with a score column")
    now = analyses.metrics("window", analyses.segment)
    unlabeled = now.rows - now.labeled_rows
    if now.rows and not unlabeled:
        raise _Skip("not needed because every row of the window has its label (the quality-drop "
                    "alert judges them)")
    estimate = analyses.estimate(analyses.segment)
    if estimate.reason:
        raise _Skip(estimate.reason)
    before = analyses.metrics("reference", analyses.segment)
    alerts = []
    for name in ESTIMATED_METRICS:
        cell = estimate.window.get(name) or {}
        rows = estimate.counts.get("unlabeled_rows", unlabeled)
        current = MetricValue(cell.get("value"), cell.get("ci_low"), cell.get("ci_high"), rows,
                              reason=cell.get("reason"))
        change = compare_metric(name, current, before.metrics[name])
        sentence = change.sentence
        if change.p_value is not None:
            sentence = (f"estimated {label(name)} of the {rows:,} rows without labels is "
                        f"{current.value:.3f} ({_band(current)}), vs {change.reference.value:.3f} "
                        f"in the reference")
        alerts.append(_judge_drop("estimated_quality_drop", name, f"estimated {label(name)}",
                                  change, False, sentence, unlabeled_rows=rows))
    return alerts


def _band(metric) -> str:
    if metric.ci_low is None or metric.ci_high is None:
        return "no band"
    return f"band {metric.ci_low:.3f}–{metric.ci_high:.3f}"


def _dataset_drift(analyses: _Analyses) -> list[Alert]:
    drift = analyses.drift(analyses.segment)
    if drift.dataset_drift is None:
        raise _Skip(drift.reason or "not computable because no column could be tested")
    tested = sum(1 for c in drift.columns if c.computable)
    drifted = drift.drifted_columns
    share = f"{len(drifted)} of {tested} columns drifted ({_percent(drift.drift_share)})"
    needed = f"dataset drift needs {_percent(drift.dataset_share)}"
    message = (f"dataset drift: {share}: {_names(drifted)}" if drift.dataset_drift
               else f"no dataset drift: {share}; {needed}")
    return [_default_alert("dataset_drift", bool(drift.dataset_drift), message,
                           f"dataset drift ({share})", op=">=", value=drift.drift_share,
                           threshold=drift.dataset_share,
                           details={"drifted_columns": drifted, "columns_tested": tested})]


def _feature_drift(analyses: _Analyses) -> list[Alert]:
    from mlmon_core.drift import P_VALUE_TESTS, TEST_NAMES

    drift = analyses.drift(analyses.segment)
    features = [c for c in drift.columns if c.role == "feature" and c.computable]
    if not features:
        raise _Skip(drift.reason or "not computable because no feature could be tested")
    tested_by_p = sum(1 for c in features if c.test in P_VALUE_TESTS)
    drifted = [c for c in features if _feature_drifted(analyses.view, c, tested_by_p)]
    within_noise = [c.column for c in features if c.drifted_within_noise]
    count = f"{len(drifted)} of {len(features)} features"
    noise = (f" ({len(within_noise)} more passed the distance threshold within sampling noise: "
             f"{_names(within_noise)})" if within_noise else "")
    if drifted:
        shown = "; ".join(f"{c.column} ({TEST_NAMES.get(c.test, c.test)} {c.score:.3g}, "
                          f"threshold {c.threshold:g}{_noise_words(c)})" for c in drifted[:5])
        message = (f"{count} drifted beyond sampling noise: {shown}"
                   + (" and more" if len(drifted) > 5 else "") + noise)
    else:
        message = f"none of the {len(features)} features drifted beyond sampling noise{noise}"
    return [_default_alert("feature_drift", bool(drifted), message,
                           f"{count} drifted beyond sampling noise "
                           f"({_names([c.column for c in drifted])})", op=">=",
                           value=float(len(drifted)), threshold=1.0,
                           details={"drifted_features": [c.column for c in drifted],
                                    "features_tested": len(features),
                                    "bonferroni_tests": tested_by_p,
                                    "drifted_within_noise": within_noise})]


def _noise_words(column) -> str:
    return "" if column.noise_level is None else f", noise level {column.noise_level:.3g}"


def _feature_drifted(view, column, tested_by_p: int) -> bool:
    from mlmon_core.drift import P_VALUE_TESTS

    if not column.drifted_beyond_noise:
        return False
    overridden = view.config.drift.columns.get(column.column)
    if column.test not in P_VALUE_TESTS or (overridden and overridden.threshold is not None):
        return True
    return column.p_value is not None and column.p_value < FEATURE_DRIFT_ALPHA / max(tested_by_p, 1)


def _missing_spike(analyses: _Analyses) -> list[Alert]:
    quality = analyses.quality(analyses.segment)
    if quality.rows == 0:
        raise _Skip(f"not computable because the window {analyses.window} has no rows (the volume "
                    "alert covers it)")
    inputs = set(_input_columns(analyses.view))
    findings = [f for f in quality.findings if f.check == "missing" and f.column in inputs
                and f.severity in ("high", "medium")]
    by_name = {c.column: c for c in quality.columns}
    if not findings:
        measured = [c for c in quality.columns
                    if c.column in inputs and c.missing_share is not None]
        worst = max(measured, default=None,
                    key=lambda c: c.missing_share - (c.reference_missing_share or 0.0))
        rise = 0.0 if worst is None else worst.missing_share - (worst.reference_missing_share or 0)
        detail = "" if rise <= 0 else (
            f" (largest: {worst.column} {_percent(worst.missing_share)}, reference "
            f"{_percent(worst.reference_missing_share or 0.0)})")
        return [_default_alert("missing_spike", False,
                               f"no input column's missing share rose by {MISSING_RISE * 100:g} "
                               f"points or more{detail}", op=">")]
    alerts = []
    for finding in findings:
        column = by_name[finding.column]
        before = column.reference_missing_share or 0.0
        alerts.append(_default_alert(
            "missing_spike", True, finding.message, f"{finding.column} is missing in "
            f"{_percent(column.missing_share)} of rows (reference {_percent(before)})",
            severity=finding.severity, suffix=finding.column, column=finding.column, op=">=",
            value=column.missing_share, threshold=min(before + MISSING_RISE, 1.0),
            reference_value=column.reference_missing_share))
    return alerts


def _volume_drop(analyses: _Analyses) -> list[Alert]:
    target = analyses.view.roles.target
    if target and any(condition.column == target for condition in analyses.segment):
        # Rows enter such a segment when their labels arrive: its volume measures labeling.
        raise _Skip(f"not computable because the segment filters on the target {target!r}, "
                    "so its row count follows label arrival, not traffic")
    quality = analyses.quality(analyses.segment)
    if not quality.expected_rows:
        raise _Skip(f"not computable because the expected volume is unknown "
                    f"({quality.expected_rows_method or 'the reference has no rows'})")
    threshold = VOLUME_DROP * quality.expected_rows
    fired = quality.rows < threshold
    ratio = quality.rows / quality.expected_rows
    message = (f"{quality.rows:,} rows in the window, {ratio:.0%} of the "
               f"{quality.expected_rows:,.0f} expected ({quality.expected_rows_method})")
    return [_default_alert("volume_drop", fired, message,
                           f"volume fell to {ratio:.0%} of the expected rows", op="<",
                           value=float(quality.rows), threshold=threshold,
                           reference_value=quality.expected_rows)]


def _latency_spike(analyses: _Analyses) -> list[Alert]:
    now = analyses.service("window", analyses.segment)
    before = analyses.service("reference", analyses.segment)
    _require_service("latency_p95", now, before)
    if now["latency_rows"] < MIN_LATENCY_ROWS:
        raise _Skip(f"not computable because only {now['latency_rows']} rows of the window have a "
                    f"latency (a p95 needs at least {MIN_LATENCY_ROWS})")
    value, reference = now["latency_p95"], before["latency_p95"]
    threshold = LATENCY_RATIO * reference
    fired = value > threshold
    message = (f"latency p95 is {value:,.1f} ms, {value / reference:.1f}× the reference's "
               f"{reference:,.1f} ms (alert above {LATENCY_RATIO:g}×)") if reference > 0 else \
        f"latency p95 is {value:,.1f} ms (reference {reference:,.1f} ms)"
    return [_default_alert("latency_spike", fired, message,
                           f"latency p95 rose to {value:,.0f} ms ({reference:,.0f} ms in the "
                           "reference)", op=">", value=value, threshold=threshold,
                           reference_value=reference)]


def _error_rate_spike(analyses: _Analyses) -> list[Alert]:
    now = analyses.service("window", analyses.segment)
    before = analyses.service("reference", analyses.segment)
    _require_service("error_rate", now, before)
    rate, reference = now["error_rate"], before["error_rate"]
    threshold = max(ERROR_RATE_RATIO * reference, reference + ERROR_RATE_RISE)
    p_value = _one_sided_two_proportion(now["errors"], now["status_rows"], before["errors"],
                                        before["status_rows"])
    fired = rate > threshold and p_value < ALPHA
    message = (f"error rate is {_percent(rate)} ({now['errors']:,} of {now['status_rows']:,} rows) "
               f"vs {_percent(reference)} in the reference")
    message += "" if fired else f"; alerts above {_percent(threshold)} when significant"
    return [_default_alert("error_rate_spike", fired, message,
                           f"the error rate rose to {_percent(rate)} ({_percent(reference)} in "
                           "the reference)", op=">", value=rate, threshold=threshold,
                           reference_value=reference, details={"p_value": p_value})]


def _require_service(name: str, now: Mapping[str, Any], before: Mapping[str, Any]) -> None:
    for side, entry in (("", now), ("in the reference: ", before)):
        if entry.get(name) is None:
            reason = entry.get("reasons", {}).get(name, "not computable because it has no value")
            raise _Skip(side + reason)


def _one_sided_two_proportion(errors: int, rows: int, reference_errors: int,
                              reference_rows: int) -> float:
    """P-value of "the window's rate is higher" by the pooled two-proportion z test."""
    pooled = (errors + reference_errors) / (rows + reference_rows)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / rows + 1 / reference_rows))
    difference = errors / rows - reference_errors / reference_rows
    if spread == 0:
        return 0.0 if difference > 0 else 1.0
    return 0.5 * math.erfc(difference / spread / math.sqrt(2))


_DEFAULT_EVALUATORS: dict[str, Callable[[_Analyses], list[Alert]]] = {
    "quality_drop": _quality_drop, "estimated_quality_drop": _estimated_quality_drop,
    "dataset_drift": _dataset_drift, "feature_drift": _feature_drift,
    "missing_spike": _missing_spike, "volume_drop": _volume_drop,
    "latency_spike": _latency_spike, "error_rate_spike": _error_rate_spike,
}


def _names(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---------------------------------------------------------------- retrain?

def advise(result: CheckResult) -> Advice:
    """Retrain, fix first, watch or nothing: the plain-words answer for managers.

    Retraining is recommended when quality fell (realized or estimated) or a high-severity drift
    alert fires. Data and service alerts are things to fix, not reasons to retrain: a model
    retrained on broken inputs learns the breakage.
    """
    fired = result.fired
    quality = _phrases(a for a in fired if a.category == "quality")
    drift = _phrases(a for a in fired if a.category == "drift")
    issues = _phrases(a for a in fired if a.category not in ("quality", "drift"))
    recommended = bool(quality) or any(a.category == "drift" and a.severity == "high"
                                       for a in fired)
    coverage = _coverage(result)
    fix = f" Fix first: {_join(issues)}." if issues else ""
    if recommended:
        action = "retrain"
        text = f"Retraining recommended: {_join(quality + drift)}; {coverage}.{fix}"
        if issues:
            text += " A model retrained on broken inputs would learn the breakage."
    elif drift:
        action = "watch"
        text = (f"Watch, no retraining yet: {_join(drift)}, but quality has not fallen measurably; "
                f"{coverage}.{fix}")
    elif issues:
        action = "fix"
        text = f"No retraining needed, but fix: {_join(issues)}; {coverage}."
    else:
        action = "ok"
        text = f"No action needed: no alert fires for {result.window}; {coverage}."
    blind = _quality_unknown(result)
    if blind and not quality:
        text += f" Quality could not be judged: {blind}."
    return Advice(recommended, action, quality + drift + issues, text)


def _phrases(alerts: Iterable[Alert]) -> list[str]:
    return list(dict.fromkeys(a.summary or a.message for a in alerts))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _coverage(result: CheckResult) -> str:
    if not result.rows:
        return "the window has no rows"
    return f"labels cover {_percent(result.labeled_rows / result.rows)} of the window"


def _quality_unknown(result: CheckResult) -> str | None:
    judged = [a for a in result.alerts if a.category == "quality"]
    quality_skips = [a for a in result.skipped if a.check in ("quality_drop",
                                                              "estimated_quality_drop")]
    if judged or not quality_skips:
        return None
    return quality_skips[0].reason.removeprefix("not computable because ")


# ---------------------------------------------------------------- webhook

@dataclass(frozen=True)
class Webhook:
    """Where and when to POST the result."""

    url: str
    send: str = "fired"


def webhook_target(config: Config, url: str | None = None,
                   send: str | None = None) -> Webhook | None:
    """The webhook from ``--webhook URL`` (wins) or ``[alerts_webhook]``; None when neither."""
    configured = config.alerts_webhook
    if url is None and configured is None:
        return None
    chosen = (url if url is not None else configured.url).strip()
    problem = webhook_url_problem(chosen)
    if problem:
        raise MlmonError(f"--webhook: {problem}")
    return Webhook(chosen, send or (configured.send if configured else "fired"))


def redacted(url: str) -> str:
    """The URL as it may be shown in output and logs: scheme and host only, since webhook paths
    and queries often carry a secret token."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook is POSTed where it was configured, never re-sent elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib API
        return None


def send_webhook(url: str, payload: Mapping[str, Any], *, timeout: float = WEBHOOK_TIMEOUT,
                 attempts: int = WEBHOOK_ATTEMPTS, backoff: float = WEBHOOK_BACKOFF,
                 budget: float = WEBHOOK_BUDGET) -> dict[str, Any]:
    """POST ``payload`` as JSON; retry connection errors, timeouts, 5xx and 408/425/429.

    At most ``attempts`` tries, waiting ``backoff``, 2·``backoff``... between them, each try
    limited to ``timeout`` seconds per socket operation and all of it to ``budget`` seconds.
    Never raises: returns ``{url, status, attempts, sent, error?, seconds}`` with the URL redacted.
    """
    try:
        body = json.dumps(payload, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        return {"url": redacted(url), "status": None, "attempts": 0, "sent": False,
                "error": f"the result is not plain JSON ({exc})", "seconds": 0.0}
    opener = urllib.request.build_opener(_NoRedirect)
    started = time.monotonic()
    status, error, tries = None, None, 0
    for tries in range(1, attempts + 1):
        remaining = budget - (time.monotonic() - started)
        if remaining <= 0:
            tries -= 1
            error = f"gave up after {budget:g} s ({error})"
            break
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "mlmon-check"})
        try:
            with opener.open(request, timeout=min(timeout, remaining)) as response:
                status = response.status
            return {"url": redacted(url), "status": status, "attempts": tries, "sent": True,
                    "seconds": round(time.monotonic() - started, 3)}
        except urllib.error.HTTPError as exc:
            status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code not in _RETRY_STATUSES:
                break
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            status, error = None, _network_error(exc)
        if tries < attempts:
            pause = backoff * 2 ** (tries - 1)
            if time.monotonic() - started + pause >= budget:
                break
            time.sleep(pause)
    return {"url": redacted(url), "status": status, "attempts": tries, "sent": False,
            "error": error,
            "seconds": round(time.monotonic() - started, 3)}


def _network_error(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    return str(reason)


def deliver(hook: Webhook, payload: Mapping[str, Any], fired: bool, **options) -> dict[str, Any]:
    """Send ``payload`` to the webhook when its ``send`` policy says so; the outcome as a dict."""
    if hook.send == "fired" and not fired:
        return {"url": redacted(hook.url), "status": None, "attempts": 0, "sent": False,
                "note": "not sent: no alert fired (send = \"fired\")"}
    return send_webhook(hook.url, payload, **options)
