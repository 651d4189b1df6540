"""The stakeholder report: one self-contained HTML file a product manager can forward.

``build_report`` runs the analyses a reader needs for one window (model health and its trend, the
weakest segments, segments that got worse, data problems, drift, service health, fired alerts when
the alerts module is installed) and keeps their results plus plain-word sentences in a ``Report``.
``render_html`` turns it into a single HTML file: text first, numbers with their n and CIs second,
readable typography and print-friendly CSS, no external fonts.

Charts are Vega-Lite specs (built with ``charts.py``) drawn in the reader's browser by Vega,
Vega-Lite and vega-embed, whose JavaScript is embedded *inline*: the file opens without any
network. The JavaScript comes from the ``vl-convert-python`` package, which ships those libraries
inside its wheel and bundles them offline (``vl_convert.javascript_bundle``); the bundle is cached
in ``~/.cache/mlmon`` (``XDG_CACHE_HOME``) because building it takes a few seconds. Each spec also
stays readable in the file as ``<script type="application/json">``, and the report's numbers are
embedded the same way (``id="mlmon-report-data"``), so the file can be mined by a program too.

Sizes: the inline JavaScript is about 0.9 MB; the report's own content adds 30–100 kB.
"""

from __future__ import annotations

import html
import importlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.errors import MlmonError, NotComputableError
from mlmon_core.metrics import p_value_text
from mlmon_core.sql import Segment

Progress = Callable[[float, str], None]

SECTIONS = {
    "summary": "Summary",
    "health": "Model health",
    "trend": "Quality over time",
    "segments": "Where the model is weakest",
    "degraded": "Groups that got worse",
    "data": "Data problems",
    "drift": "Drift",
    "changes": "What changed since the reference",
    "service": "Service health",
    "alerts": "Alerts",
    "methods": "How these numbers were computed",
}
STATUS_WORDS = {"attention": "Needs attention", "ok": "Looks healthy",
                "unknown": "Not enough data to judge"}
TOP_SLICES = 5
TOP_DRIFT_COLUMNS = 12
CHART_WIDTH = 760
PERCENT_METRICS = {"accuracy", "balanced_accuracy", "precision", "recall", "positive_rate",
                   "predicted_positive_rate"}
ALPHA = 0.05
METADATA_ROLES = {"model", "variant", "latency", "status", "label_timestamp"}
_BUNDLE_MARKER = "window.vegaEmbed="


# ================================================================= result

@dataclass(frozen=True)
class Card:
    """One headline metric now against the reference, as the report's metric card shows it."""

    metric: str
    label: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    reference_value: float | None
    reference_n: int
    difference: float | None
    p_value: float | None
    verdict: str            # "worse", "better", "no clear change", "changed" or "unknown"
    estimated: bool = False
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {k: getattr(self, k) for k in (
            "metric", "label", "value", "ci_low", "ci_high", "n", "reference_value",
            "reference_n", "difference", "p_value", "verdict", "estimated", "reason")}


@dataclass
class Report:
    """Everything the report shows, computed once; ``render_html`` only formats it."""

    title: str
    subject: str
    window: Window
    reference: Window
    segment: Segment
    task: str
    generated_at: datetime
    rows: int
    labeled_rows: int
    reference_rows: int
    status: str
    summary: list[str]
    cards: list[Card] = field(default_factory=list)
    lead_metric: str | None = None
    health: Any = None          # health.Health
    weak: Any = None            # slices.SliceReport
    degraded: Any = None        # slices.SliceReport
    quality: Any = None         # quality.QualityResult
    drift: Any = None           # drift.DriftResult
    service: Any = None         # service.ServiceResult
    alerts: Any = None          # alerts result, when mlmon_core.alerts exists
    reasons: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    source: str = ""
    scope: str = "all predictions"

    @property
    def sections(self) -> list[str]:
        """Keys of the sections the report shows, in order (see ``SECTIONS`` for their titles)."""
        keys = ["summary", "health", "trend", "segments", "degraded", "data", "drift", "changes"]
        if self.service is not None and self.service.reason is None:
            keys.append("service")
        if self.alerts is not None or "alerts" in self.reasons:
            keys.append("alerts")
        return keys + ["methods"]

    @property
    def segment_text(self) -> str:
        """The segment in plain words."""
        return sql.describe_segment(self.segment)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the sentences, the cards and every analysis' own JSON form."""
        def part(value):
            return None if value is None else value.to_json()

        return _jsonable({
            "title": self.title, "subject": self.subject, "window": self.window.to_json(),
            "reference": self.reference.to_json(), "segment": sql.segment_to_json(self.segment),
            "segment_text": self.segment_text, "task": self.task,
            "generated_at": self.generated_at.isoformat(), "rows": self.rows,
            "labeled_rows": self.labeled_rows, "reference_rows": self.reference_rows,
            "status": self.status, "status_text": STATUS_WORDS[self.status],
            "summary": self.summary, "sections": self.sections,
            "cards": [c.to_json() for c in self.cards], "lead_metric": self.lead_metric,
            "health": part(self.health), "weak_segments": part(self.weak),
            "degraded_segments": part(self.degraded), "quality": part(self.quality),
            "drift": part(self.drift), "service": part(self.service),
            "alerts": part(self.alerts),
            "reasons": self.reasons, "timings": self.timings,
        })


@dataclass(frozen=True)
class ReportFile:
    """A report written to disk."""

    path: Path
    bytes: int
    report: Report

    def to_json(self) -> dict[str, Any]:
        """``{out, sections, bytes, status, summary}`` for ``mlmon report --json``."""
        return {"out": str(self.path), "sections": self.report.sections, "bytes": self.bytes,
                "status": self.report.status, "summary": self.report.summary,
                "window": self.report.window.to_json(),
                "reference": self.report.reference.to_json(),
                "segment": sql.segment_to_json(self.report.segment),
                "timings": self.report.timings}


# ================================================================= building

def build_report(view, window: Window, reference: Window | None = None, segment: Segment = (),
                 progress: Progress | None = None, *, title: str | None = None) -> Report:
    """Run every analysis the report needs for ``window`` (against ``reference``, by default the
    config's reference window) within ``segment``.

    Raises ``NotComputableError`` when the window holds no prediction at all (a report of nothing
    is not worth forwarding; the message gives the log's time range) and ``FilterError`` for a
    segment naming an unknown column. Any other analysis that cannot be computed leaves a reason
    in ``Report.reasons`` and the report is still built.
    """
    from mlmon_core.windows import reference_window, time_range

    tell = progress or (lambda fraction, message: None)
    segment = tuple(segment or ())
    sql.compile_segment(segment, view.column_types)
    reference = reference if reference is not None else reference_window(view)
    timings: dict[str, float] = {}
    reasons: dict[str, str] = {}
    tell(0.0, "counting rows")
    rows = view.count(window, segment)
    if rows == 0:
        first, last = time_range(view)
        span = f"{first} .. {last}" if first is not None else "no rows at all"
        raise NotComputableError(
            f"no predictions in the window {window} for {sql.describe_segment(segment)}; the log "
            f"covers {span}. Choose a window inside it (--window START..END).")
    reference_rows = view.count(reference, segment)
    steps = _Steps(tell, timings, reasons)
    run = _Memo(view)
    health = steps.run("health", 0.02, 0.3, "measuring model quality and its trend",
                       lambda _: _model_health(view, window, reference, segment))
    weak = steps.run("segments", 0.3, 0.5, "searching for weak segments",
                     lambda sub: _weak_slices(view, window, segment, sub))
    degraded = steps.run("degraded", 0.5, 0.7, "searching for segments that got worse",
                         lambda sub: _degraded_slices(view, window, reference, segment, sub))
    quality = steps.run("data", 0.7, 0.8, "checking data quality", lambda _: run(
        "mlmon_core.quality:check_quality", window, reference, segment))
    drift = steps.run("drift", 0.8, 0.9, "measuring drift", lambda _: run(
        "mlmon_core.drift:compute_drift", window, reference, segment))
    service = steps.run("service", 0.9, 0.95, "measuring service health", lambda _: run(
        "mlmon_core.service:service_health", window, segment))
    alerts = steps.run("alerts", 0.95, 0.99, "evaluating alert rules",
                       lambda _: _alerts(view, window, reference, segment, reasons, run))
    cards = _cards(health)
    report = Report(
        title=title or _title(view, window, segment), subject=_subject(view, segment),
        window=window, reference=reference, segment=segment, task=view.task,
        generated_at=datetime.now(timezone.utc).replace(microsecond=0), rows=rows,
        labeled_rows=health.labeled_rows if health is not None else 0,
        reference_rows=reference_rows, status="unknown", summary=[], cards=cards,
        lead_metric=_lead_metric(health, cards), health=health, weak=weak, degraded=degraded,
        quality=quality, drift=drift, service=service, alerts=alerts, reasons=reasons,
        timings=timings, source=_source_name(view), scope=_scope(view, segment))
    report.status = _status(report)
    report.summary = executive_summary(report)
    tell(1.0, "done")
    return report


class _Steps:
    """Runs the analyses one after another, timing them and mapping their progress into the
    report's; an analysis that cannot be computed leaves its reason instead of a result."""

    def __init__(self, tell: Progress, timings: dict[str, float], reasons: dict[str, str]):
        self.tell, self.timings, self.reasons = tell, timings, reasons

    def run(self, key: str, start: float, end: float, message: str, work: Callable) -> Any:
        self.tell(start, message)

        def sub(fraction: float, text: str) -> None:
            self.tell(start + (end - start) * min(max(float(fraction), 0.0), 1.0),
                      f"{message}: {text}")

        began = time.perf_counter()
        try:
            return work(sub)
        except NotComputableError as exc:
            self.reasons[key] = str(exc)
            return None
        finally:
            self.timings[key] = round(time.perf_counter() - began, 3)


def _model_health(view, window, reference, segment):
    from mlmon_core.health import model_health

    return model_health(view, window, reference, segment)


def _weak_slices(view, window, segment, progress):
    from mlmon_core.slices import find_slices

    return find_slices(view, window, segment, top=TOP_SLICES, progress=progress)


def _degraded_slices(view, window, reference, segment, progress):
    from mlmon_core.slices import find_degraded_slices

    # "Got worse" is a claim about outcomes: errors estimated from an uncalibrated score would
    # only echo a shift of the scores, which the drift section already shows.
    return find_degraded_slices(view, window, reference, segment, top=TOP_SLICES,
                                error_source="labels", progress=progress)


class _Memo:
    """Runs ``module:function(view, *args, **kwargs)`` once per distinct call. The alert rules are
    given it as their runner, so they read the very drift, quality and service results the report
    shows instead of computing them again."""

    def __init__(self, view):
        self.view = view
        self.results: dict[tuple, Any] = {}

    def __call__(self, function: str, *args: Any, **kwargs: Any) -> Any:
        key = (function, repr(args), repr(sorted(kwargs.items())))
        if key not in self.results:
            module, name = function.split(":")
            self.results[key] = getattr(importlib.import_module(module), name)(
                self.view, *args, **kwargs)
        return self.results[key]


def _alerts(view, window, reference, segment, reasons: dict[str, str], runner: _Memo):
    """The alert rules evaluated (``alerts.evaluate_alerts``: fired alerts and the retrain
    advice), or None when the alerts module is not installed. A broken ``[[alerts]]`` table only
    costs this section (its message is kept as the reason), not the whole report."""
    try:
        from mlmon_core.alerts import evaluate_alerts
    except ModuleNotFoundError as exc:
        if exc.name != "mlmon_core.alerts":
            raise
        return None
    try:
        return evaluate_alerts(view, window, reference, segment, runner=runner)
    except MlmonError as exc:
        reasons["alerts"] = f"the alert rules could not be evaluated: {exc}"
        return None


def default_model(view, window: Window) -> str | None:
    """The model with the most rows in ``window`` when the log holds several (the app's default
    too); None without a model column or with a single model."""
    column = view.roles.model
    if not column:
        return None
    query = sql.render(_MODEL_ROWS, m=sql.ident(column), log=view.relation,
                       where=view.where(window, ()))
    found = [(name, rows) for name, rows in view.fetchall(query) if name is not None]
    return str(found[0][0]) if len(found) > 1 else None


_MODEL_ROWS = "SELECT {m}, count(*) FROM {log} WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1"


# ================================================================= words

def executive_summary(report: Report) -> list[str]:
    """Three to five sentences: is the model OK, what got worse, the biggest data problem, what
    to do. Plain words first, the evidence in brackets."""
    bullets = [_verdict_sentence(report)]
    degraded = _slices_of(report.degraded)
    weak = _slices_of(report.weak)
    if degraded:
        bullets.append(degraded_sentence(degraded[0], report.degraded))
    if weak:
        bullets.append(slice_sentence(weak[0], report.weak))
    problem = _biggest_data_problem(report)
    if problem:
        bullets.append(problem)
    drift = _drift_sentence(report.drift)
    if drift and len(bullets) < 4:
        bullets.append(drift)
    bullets = bullets[:4]
    advice = "What to do: " + _advice(report)
    if report.alerts is not None and report.alerts.advice.text:
        advice += " Alert check: " + _sentence(report.alerts.advice.text)
    bullets.append(advice)
    return bullets


def _verdict_sentence(report: Report) -> str:
    cards = [c for c in report.cards if c.value is not None]
    worse = [c for c in cards if c.verdict == "worse"]
    since = f"the reference period ({window_words(report.reference)})"
    if worse:
        lead = worse[0]
        estimated_word = "an estimated " if lead.estimated else ""
        change = f"{lead.label} {_moved(lead)} from {_metric(lead.metric, lead.reference_value)} to " \
                 f"{estimated_word}{_metric(lead.metric, lead.value)}"
        others = [c.label for c in worse[1:]]
        more = f"; {_list_words(others, 3)} {'is' if len(others) == 1 else 'are'} worse too" \
            if others else ""
        estimated = "; estimated from the model's scores, as outcomes are not known yet" \
            if lead.estimated else ""
        return (f"The model is doing worse than in {since}: {change} "
                f"({_evidence(lead.p_value, lead.n)}{estimated}){more}.")
    if cards:
        lead = cards[0]
        value = _metric(lead.metric, lead.value)
        if lead.estimated:
            return (f"Outcomes are not known yet for most of this window; from the model's scores "
                    f"its {lead.label} is estimated at {value} ({_ci(lead)}), against "
                    f"{_metric(lead.metric, lead.reference_value)} measured in {since}. No "
                    f"headline metric is significantly worse.")
        return (f"The model is doing as well as in {since}: {lead.label} {value} ({_ci(lead)}, "
                f"n={lead.n:,}) against {_metric(lead.metric, lead.reference_value)}; no headline "
                f"metric is significantly worse.")
    why = report.reasons.get("health") or "no prediction in the window has a known outcome"
    return (f"The model's quality cannot be judged for this window yet: {_strip_reason(why)}. "
            f"{report.rows:,} predictions were made.")


def slice_sentence(found, slice_report) -> str:
    """One weak segment in plain words: how often the model is wrong there, how big it is, and
    how often it is wrong elsewhere."""
    group = _group_words(found, slice_report)
    share = _share(found.rows, slice_report.rows)
    estimated = _estimated(slice_report)
    inside, outside = found.value, found.complement_value
    if slice_report.metric == "error_rate":
        verb = "is expected to be wrong about" if estimated else "is wrong"
        text = (f"the model {verb} {_percent(inside)} of the time for {group} ({share} of "
                f"predictions), against {_percent(outside)} elsewhere")
    elif slice_report.metric == "abs_error":
        text = (f"the model's predictions are off by {_number(inside)} on average for {group} "
                f"({share} of predictions), against {_number(outside)} elsewhere")
    else:
        words = _metric_words(slice_report)
        text = (f"the model's {words} is {_number(inside)} for {group} ({share} of predictions), "
                f"against {_number(outside)} elsewhere (higher is worse)")
    if estimated:
        text += " — estimated from its scores, as outcomes are not known yet"
    return _capital(text) + "."


def degraded_sentence(found, slice_report) -> str:
    """One degraded segment in plain words: its error then and now, against the rest's."""
    group = _group_words(found, slice_report)
    share = _share(found.rows, slice_report.rows)
    show = _percent if slice_report.metric == "error_rate" else _number
    what = _metric_words(slice_report)
    return (f"Since the reference period the model got worse for {group} ({share} of "
            f"predictions): its {what} rose from {show(found.reference_value)} to "
            f"{show(found.value)}, while elsewhere it went from "
            f"{show(found.complement_reference_value)} to {show(found.complement_value)}.")


def slice_evidence(found, slice_report) -> str:
    """The numbers behind a slice sentence: its rows, the rows checked and the q-value."""
    what = "predictions" if _estimated(slice_report) else "predictions with a known outcome"
    text = f"{found.rows:,} of {slice_report.rows:,} {what}"
    if found.reference_rows is not None:
        text += f" (reference: {found.reference_rows:,})"
    q = "q < 0.001" if found.q_value < 0.001 else f"q = {found.q_value:.3f}"
    return f"{text}; {q} (false discovery rate controlled over {slice_report.candidates_tested:,} " \
           f"groups tested)"


def _group_words(found, slice_report) -> str:
    own = found.conditions[len(slice_report.segment):]
    return "cases where " + sql.describe_segment(tuple(own)) if own else "all predictions"


def _estimated(slice_report) -> bool:
    return slice_report.metric_description.startswith("estimated")


def _metric_words(slice_report) -> str:
    from mlmon_core.slices import METRIC_WORDS

    words = METRIC_WORDS.get(slice_report.metric, slice_report.metric_description)
    if _estimated(slice_report):
        return f"{words}, estimated from its scores as outcomes are not known yet"
    return words


def _biggest_data_problem(report: Report) -> str | None:
    findings = _input_findings(report)
    serious = [f for f in findings if f.severity in ("high", "medium")]
    if not serious:
        return None
    first = serious[0]
    others = len(serious) - 1
    more = f" ({others} more problem{'s' if others != 1 else ''} below)" if others else ""
    return f"Biggest data problem ({first.severity} severity): {_sentence(first.message)}{more}"


def _data_findings(report: Report) -> list:
    """Quality findings except the target's missing values, which late labels explain (shown in
    the health section as label coverage instead)."""
    if report.quality is None:
        return []
    return [f for f in report.quality.findings if f.check != "unlabeled"]


def _input_findings(report: Report) -> list:
    """Data findings about what the model reads or says (features, prediction, score, volume,
    ids), leaving out bookkeeping columns such as the model version or the A/B arm: those are
    listed in the data section but do not make the summary or the status."""
    roles = {c.column: c.role for c in report.quality.columns} if report.quality else {}
    return [f for f in _data_findings(report) if roles.get(f.column) not in METADATA_ROLES]


def _drift_sentence(drift) -> str | None:
    if drift is None or drift.reason or drift.dataset_drift is None:
        return None
    drifted = drift.drifted_beyond_noise
    noise = len(drift.drifted_within_noise)
    if not drifted:
        if noise:
            return (f"Inputs look stable: {noise} column{'s' if noise > 1 else ''} passed the "
                    "distance threshold, but no more than sampling noise explains with these "
                    "sample sizes.")
        return "Inputs look stable: no column's distribution drifted from the reference period."
    names = _list_words(drifted, 4)
    if drift.dataset_drift:
        return (f"The data as a whole drifted: {len(drifted)} of {_computable(drift)} columns "
                f"changed distribution ({names}).")
    return (f"Some inputs changed: {names} drifted from the reference period "
            f"({len(drifted)} of {_computable(drift)} columns).")


def _advice(report: Report) -> str:
    actions = []
    degraded = _slices_of(report.degraded)
    weak = _slices_of(report.weak)
    worse = any(c.verdict == "worse" for c in report.cards)
    serious = [f for f in _input_findings(report) if f.severity == "high"]
    if worse and degraded:
        actions.append(f"look into {_group_words(degraded[0], report.degraded)} first, where "
                       "the model got worse the most; consider retraining once the cause is "
                       "understood")
    elif degraded:
        actions.append(f"watch {_group_words(degraded[0], report.degraded)}, which got worse "
                       "while the rest did not")
    elif worse:
        actions.append("consider retraining the model on recent data")
    if serious:
        column = serious[0].column
        actions.append(f"ask the data team to check {column if column else 'the data volume'} "
                       "(see Data problems)")
    if not actions and weak:
        actions.append(f"treat the model's decisions for {_group_words(weak[0], report.weak)} with "
                       "care (for example with a manual review) until it is improved there")
    if not actions and report.drift is not None and report.drift.drifted_beyond_noise:
        actions.append("keep watching: some inputs changed, but the model's quality has not "
                       "dropped")
    if not actions:
        return "nothing needs doing now."
    return _capital("; ".join(actions[:2])) + "."


def _status(report: Report) -> str:
    worse = any(c.verdict == "worse" for c in report.cards)
    degraded = bool(_slices_of(report.degraded))
    serious = any(f.severity == "high" for f in _input_findings(report))
    drift = bool(report.drift is not None and report.drift.dataset_drift)
    alerts = report.alerts
    fired = alerts is not None and (alerts.advice.recommended
                                    or any(a.severity == "high" for a in alerts.fired))
    if worse or degraded or serious or drift or fired:
        return "attention"
    return "ok" if any(c.value is not None for c in report.cards) else "unknown"


def _cards(health) -> list[Card]:
    """Headline metrics: realized where labels exist, else estimated from the scores (CBPE)."""
    if health is None:
        return []
    from mlmon_core.health import NEUTRAL, compare_metric, label
    from mlmon_core.metrics import MetricValue

    cards = []
    for change in health.headline:
        estimate = (health.estimated or {}).get(change.name) or {}
        if change.current.value is None and estimate.get("value") is not None:
            unlabeled = max(health.rows - health.labeled_rows, 0)
            current = MetricValue(estimate["value"], estimate.get("ci_low"),
                                  estimate.get("ci_high"), n=unlabeled)
            change = compare_metric(change.name, current, change.reference)
            estimated = True
        else:
            estimated = False
        cards.append(Card(
            metric=change.name, label=label(change.name), value=change.current.value,
            ci_low=change.current.ci_low, ci_high=change.current.ci_high, n=change.current.n,
            reference_value=change.reference.value, reference_n=change.reference.n,
            difference=change.difference, p_value=change.p_value,
            verdict=_verdict(change, change.name in NEUTRAL), estimated=estimated,
            reason=change.current.reason if change.current.value is None else None))
    return cards


def _verdict(change, neutral: bool) -> str:
    if change.current.value is None or change.reference.value is None or change.p_value is None:
        return "unknown"
    if change.p_value >= ALPHA:
        return "no clear change"
    if neutral:
        return "changed"
    return "worse" if change.worse else "better"


def _lead_metric(health, cards: list[Card]) -> str | None:
    if health is None or health.trend is None or health.trend.empty:
        return None
    present = set(health.trend.dropna(subset=["value"])["metric"])
    for card in cards:
        if card.metric in present:
            return card.metric
    return next(iter(dict.fromkeys(health.trend["metric"])), None)


def _title(view, window: Window, segment: Segment) -> str:
    return f"Model report: {_subject(view, segment)}, {window_words(window)}"


def _subject(view, segment: Segment) -> str:
    model_column = view.roles.model
    for condition in segment:
        if condition.column == model_column and condition.op == "==":
            return f"model {condition.value}"
    return _source_name(view)


def _scope(view, segment: Segment) -> str:
    """The segment in words without the model choice, which the title already names."""
    model_column = view.roles.model
    rest = tuple(c for c in segment if not (c.column == model_column and c.op == "=="))
    return sql.describe_segment(rest) if rest else "all predictions"


def _source_name(view) -> str:
    path = getattr(view.config, "path", None)
    return Path(path).parent.name if path else "the model"


def window_words(window: Window) -> str:
    """``16 Jul 2026 – 14 Aug 2026`` (both days included) for a half-open, midnight-aligned window."""
    def day(moment: datetime) -> str:
        return f"{moment.day} {moment:%b %Y}"

    start, end = window.start, window.end
    if start is None and end is None:
        return "the whole log"
    if end is not None and _midnight(end) and (start is None or _midnight(start)):
        last = end - timedelta(days=1)
        if start is None:
            return f"up to {day(last)}"
        return day(start) if last.date() == start.date() else f"{day(start)} – {day(last)}"
    if end is None:
        return f"from {day(start) if _midnight(start) else start.isoformat(sep=' ')}"
    shown_start = "the start" if start is None else start.isoformat(sep=" ")
    return f"{shown_start} – {end.isoformat(sep=' ')} (end excluded)"


def _midnight(moment: datetime) -> bool:
    return moment.hour == moment.minute == moment.second == moment.microsecond == 0


def _slices_of(slice_report) -> tuple:
    return tuple(slice_report.slices) if slice_report is not None else ()


def _computable(drift) -> int:
    return sum(1 for c in drift.columns if c.computable)


def _moved(card: Card) -> str:
    return "rose" if (card.difference or 0) > 0 else "fell"


def _evidence(p_value: float | None, n: int) -> str:
    if p_value is None:
        return f"n={n:,}"
    return f"n={n:,}, {p_value_text(p_value)}"


def _ci(card: Card) -> str:
    if card.ci_low is None or card.ci_high is None:
        return "no interval"
    return f"95% CI {_metric(card.metric, card.ci_low)}–{_metric(card.metric, card.ci_high)}"


def _metric(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if name in PERCENT_METRICS:
        return f"{value * 100:.1f}%"
    return _number(value)


def _difference(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    if name in PERCENT_METRICS:
        return f"{value * 100:+.1f} points".replace("-", "\u2212")
    return f"{value:+.3f}".replace("-", "\u2212")


def _percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    share = abs(value)
    if share == 0:
        return "0%"
    if share >= 0.1:
        return f"{value * 100:.0f}%"
    if share >= 0.01:
        return f"{value * 100:.1f}%"
    return f"{value * 100:.2f}%"


def _share(part: int, whole: int) -> str:
    return _percent(part / whole) if whole else "n/a"


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:,.3g}"


def _list_words(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def _strip_period(text: str) -> str:
    return text.strip().rstrip(".")


def _strip_reason(text: str) -> str:
    return _strip_period(text).removeprefix("not computable because ")


# ================================================================= HTML

def render_html(report: Report) -> str:
    """The report as one self-contained HTML document (inline CSS, JavaScript and data)."""
    charts: list[tuple[str, dict]] = []
    body = [_header(report), _contents(report)]
    renderers = {
        "summary": _summary_html, "health": _health_html, "trend": _trend_html,
        "segments": _segments_html, "degraded": _degraded_html, "data": _data_html,
        "drift": _drift_html, "changes": _changes_html, "service": _service_html,
        "alerts": _alerts_html, "methods": _methods_html,
    }
    for key in report.sections:
        inner = renderers[key](report, charts)
        body.append(f'<section id="{key}" data-section="{key}">\n<h2>{_e(SECTIONS[key])}</h2>\n'
                    f"{inner}\n</section>")
    body.append(_footer(report))
    scripts = [_json_script("mlmon-report-data", report.to_json())]
    scripts += [_json_script(chart_id, spec) for chart_id, spec in charts]
    scripts.append(_javascript_html())
    return _PAGE.format(title=_e(report.title), css=_CSS, body="\n".join(body),
                        scripts="\n".join(scripts))


def write_report(view, window: Window, out: str | Path, reference: Window | None = None,
                 segment: Segment = (), progress: Progress | None = None, *,
                 title: str | None = None) -> ReportFile:
    """Build the report and write it to ``out`` atomically (a temporary file in the same folder,
    then a rename), so a reader never opens half a report."""
    path = check_output_path(out)
    report = build_report(view, window, reference, segment, progress, title=title)
    began = time.perf_counter()
    text = render_html(report).encode("utf-8")
    report.timings["render"] = round(time.perf_counter() - began, 3)
    _write_atomically(path, text)
    return ReportFile(path=path, bytes=len(text), report=report)


def check_output_path(out: str | Path) -> Path:
    """The report's path, checked before any work: its folder must exist and it must not be a
    folder itself (``MlmonError`` naming the path otherwise)."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise MlmonError(f"--out {out}: is a folder; give a file name such as report.html")
    if not path.parent.exists():
        raise MlmonError(f"--out {out}: the folder {path.parent} does not exist")
    return path.resolve()


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _header(report: Report) -> str:
    facts = [f"Window: <strong>{_e(window_words(report.window))}</strong>",
             f"compared with {_e(window_words(report.reference))}",
             _e(report.scope),
             f"made {_e(report.generated_at.strftime('%d %b %Y %H:%M'))} UTC"]
    return (f'<header>\n<p class="eyebrow">mlmon report · {_e(report.source)}</p>\n'
            f"<h1>{_e(report.title)}</h1>\n<p class=\"meta\">{' · '.join(facts)}</p>\n</header>")


def _contents(report: Report) -> str:
    links = " ".join(f'<a href="#{key}">{_e(SECTIONS[key])}</a>' for key in report.sections)
    return f'<nav class="contents" aria-label="Contents">{links}</nav>'


def _summary_html(report: Report, charts) -> str:
    badge = (f'<p class="status status-{report.status}"><span>{_e(STATUS_WORDS[report.status])}'
             f"</span></p>")
    items = "\n".join(f"<li>{_e(sentence)}</li>" for sentence in report.summary)
    return f'{badge}\n<ul class="summary">\n{items}\n</ul>'


def _health_html(report: Report, charts) -> str:
    coverage = _share(report.labeled_rows, report.rows)
    intro = (f"<p>{report.rows:,} predictions in the window; {report.labeled_rows:,} "
             f"({coverage}) have a known outcome so far. The reference period "
             f"({_e(window_words(report.reference))}) has {report.reference_rows:,}.</p>")
    if report.health is None:
        return intro + _reason_html(report.reasons.get("health", "not computable"))
    if not report.cards:
        return intro + "<p>No headline metric could be computed for this window.</p>"
    cards = "\n".join(_card_html(card) for card in report.cards)
    note = ""
    if any(card.estimated for card in report.cards):
        note = ('<p class="note">“Estimated” values come from the model\'s own scores, calibrated '
                "on the reference period, for predictions whose outcome is not known yet.</p>")
    return f'{intro}\n<div class="cards">\n{cards}\n</div>\n{note}'


def _card_html(card: Card) -> str:
    words = {"worse": "worse than before", "better": "better than before",
             "no clear change": "no clear change", "changed": "changed",
             "unknown": "cannot compare yet"}[card.verdict]
    if card.value is None:
        body = (f'<p class="value">–</p><p class="detail">{_e(_strip_reason(card.reason or ""))}'
                f"</p>")
    else:
        tag = '<span class="tag">estimated</span>' if card.estimated else ""
        body = (f'<p class="value">{_e(_metric(card.metric, card.value))}{tag}</p>'
                f'<p class="detail">{_e(_ci(card))} · n={card.n:,}</p>')
    reference = (f"Reference: {_metric(card.metric, card.reference_value)} (n={card.reference_n:,})"
                 if card.reference_value is not None else "Reference: n/a")
    change = ""
    if card.difference is not None:
        change = f" · change {_difference(card.metric, card.difference)}, " \
                 f"{_evidence(card.p_value, card.n).split(', ', 1)[-1]}"
    return (f'<div class="card verdict-{card.verdict.replace(" ", "-")}">'
            f'<p class="label">{_e(_capital(card.label))}</p>{body}'
            f'<p class="detail">{_e(reference)}{_e(change)}</p>'
            f'<p class="verdict">{_e(words)}</p></div>')


def _trend_html(report: Report, charts) -> str:
    from mlmon_core import charts as builders
    from mlmon_core.health import label

    health = report.health
    if health is None or report.lead_metric is None:
        return _reason_html(report.reasons.get("health", "no metric could be computed per day"))
    name = report.lead_metric
    rows = health.trend[health.trend["metric"] == name]
    reference = next((c.reference.value for c in health.changes if c.name == name), None)
    chart = builders.metric_trend_chart(rows[rows["series"] == "realized"],
                                        rows[rows["series"] == "estimated"], reference,
                                        _capital(label(name)))
    figure = _chart_html(charts, "trend", chart, f"{label(name)} per day")
    caption = (f"{_e(_capital(label(name)))} per day, from the start of the reference period to the "
               "end of the window: measured where outcomes are known (blue, with its 95% band), "
               "estimated from the model's scores where they are not known yet (orange, dashed). "
               "The grey dotted line is the reference period's value.")
    return f'{figure}\n<p class="caption">{caption}</p>'


def _segments_html(report: Report, charts) -> str:
    weak = report.weak
    if weak is None:
        return _reason_html(report.reasons.get("segments", "not computable"))
    intro = (f"<p>Groups of predictions, described by up to {weak.settings.get('max_level', 3)} "
             f"conditions on the inputs, where the model's {_e(_metric_words(weak))} is "
             f"significantly higher than elsewhere (overall: {_e(_rate(weak, weak.overall))}). "
             "They were found automatically, largest effect first.</p>")
    if not weak.slices:
        return intro + _reason_html(weak.reason or "no weak group was found")
    chart = _chart_html(charts, "segments", _slice_chart(weak), "weak segments against the rest")
    return f"{intro}\n{_findings_list(weak, slice_sentence)}\n{chart}"


def _degraded_html(report: Report, charts) -> str:
    degraded = report.degraded
    if degraded is None:
        return _reason_html(report.reasons.get("degraded", "not computable"))
    intro = (f"<p>Groups whose {_e(_metric_words(degraded))} rose since the reference period "
             "by significantly more than the rest of the predictions' did, so a general change "
             "does not show up here, only one concentrated in a group.</p>")
    if not degraded.slices:
        return intro + _reason_html(degraded.reason or "no group got worse than the rest")
    return f"{intro}\n{_findings_list(degraded, degraded_sentence)}"


def _findings_list(found, sentence) -> str:
    """The found slices as a numbered list: a sentence each, with its evidence below."""
    items = "\n".join(f"<li><p>{_e(sentence(s, found))}</p><p class=\"evidence\">"
                      f"{_e(slice_evidence(s, found))}</p></li>" for s in found.slices)
    return f'<ol class="findings">\n{items}\n</ol>'


def _data_html(report: Report, charts) -> str:
    quality = report.quality
    if quality is None:
        return _reason_html(report.reasons.get("data", "not computable"))
    findings = _data_findings(report)
    delayed = [f for f in quality.findings if f.check == "unlabeled"]
    checked = ("Checked: volume, missing values, new categories, values outside the reference "
               "range, unreadable and non-finite numbers, constant columns, duplicate ids.")
    parts = [f"<p>{_e(checked)}</p>"]
    if not findings:
        parts.append("<p><strong>No data problem found.</strong></p>")
    elif not any(f.severity in ("high", "medium") for f in findings):
        parts.append("<p><strong>No serious data problem found</strong>; minor ones:</p>")
    for severity in ("high", "medium", "low"):
        chosen = [f for f in findings if f.severity == severity]
        if chosen:
            items = "\n".join(f"<li>{_e(_sentence(f.message))}</li>" for f in chosen)
            parts.append(f'<h3 class="severity severity-{severity}">{severity.capitalize()} '
                         f"severity ({len(chosen)})</h3>\n<ul>\n{items}\n</ul>")
    for finding in delayed:
        parts.append(f'<p class="note">Outcomes: {_e(_sentence(finding.message))} This is usually '
                     "because outcomes (labels) arrive later than predictions, so it is not "
                     "counted as a data problem.</p>")
    return "\n".join(parts)


def _drift_html(report: Report, charts) -> str:
    drift = report.drift
    if drift is None:
        return _reason_html(report.reasons.get("drift", "not computable"))
    if drift.reason:
        return _reason_html(drift.reason)
    share = "n/a" if drift.drift_share is None else f"{drift.drift_share:.0%}"
    verdict = {True: "The data as a whole drifted", False: "No dataset drift",
               None: "Drift could not be judged"}[drift.dataset_drift]
    parts = [f"<p><strong>{verdict}</strong>: {len(drift.drifted_columns)} of {_computable(drift)} "
             f"columns changed distribution ({share}; dataset drift is declared from "
             f"{drift.dataset_share:.0%}). {drift.current_rows:,} rows in the window against "
             f"{drift.reference_rows:,} in the reference period.</p>"]
    # Columns that drifted beyond sampling noise first; the others are marked in their words.
    drifted = sorted((c for c in drift.columns if c.drifted),
                     key=lambda c: not c.drifted_beyond_noise)
    if drifted:
        items = "\n".join(f"<li><strong>{_e(c.column)}</strong>: {_e(_drift_words(c))}</li>"
                          for c in drifted[:TOP_DRIFT_COLUMNS])
        parts.append(f"<ul>\n{items}\n</ul>")
    frame = _drift_frame(drift)
    if not frame.empty:
        from mlmon_core import charts as builders

        parts.append(_chart_html(charts, "drift", builders.drift_bar_chart(frame),
                                 "drift score of the most changed columns"))
        parts.append('<p class="caption">The columns that changed most, by drift score (a '
                     "distance, or 1 − p-value for statistical tests); red ones crossed their "
                     "threshold.</p>")
    return "\n".join(parts)


def _drift_words(column) -> str:
    from mlmon_core.drift import P_VALUE_TESTS, TEST_NAMES

    test = TEST_NAMES.get(column.test, column.test)
    if column.test in P_VALUE_TESTS:
        return (f"distribution changed ({test}, {p_value_text(column.p_value)}, "
                f"threshold {column.threshold:g})")
    words = f"distribution shifted ({test} {column.statistic:.3f}, threshold {column.threshold:g})"
    if column.beyond_noise is False:
        words = (f"{test} {column.statistic:.3f} passed the threshold {column.threshold:g}, but "
                 f"chance alone reaches {column.noise_level:.3f} with these sample sizes: likely "
                 "sampling noise, not drift")
    return words


def _drift_frame(drift):
    import pandas as pd

    from mlmon_core.drift import P_VALUE_TESTS

    records = []
    for c in drift.columns:
        if not c.computable:
            continue
        score = (1 - c.p_value) if c.test in P_VALUE_TESTS and c.p_value is not None else c.statistic
        records.append({"column": c.column, "score": score, "drifted": bool(c.drifted),
                        "test": c.test, "statistic": c.statistic, "p_value": c.p_value})
    frame = pd.DataFrame.from_records(
        records, columns=["column", "score", "drifted", "test", "statistic", "p_value"])
    frame = frame.dropna(subset=["score"])
    return frame.sort_values(["drifted", "score"], ascending=False).head(TOP_DRIFT_COLUMNS)


def _changes_html(report: Report, charts) -> str:
    from mlmon_core.health import NEUTRAL, label

    health = report.health
    if health is None:
        return _reason_html(report.reasons.get("health", "not computable"))
    computable = [c for c in health.changes if c.difference is not None]
    if not computable:
        return _reason_html("no metric can be computed in both the window and the reference "
                            "period yet (outcomes are needed in both)")
    rows = []
    for change in computable:
        verdict = _verdict(change, change.name in NEUTRAL)
        rows.append(
            f'<tr class="verdict-{verdict.replace(" ", "-")}"><th scope="row">'
            f"{_e(_capital(label(change.name)))}</th>"
            f'<td class="num">{_e(_metric(change.name, change.reference.value))}</td>'
            f'<td class="num">{_e(_metric(change.name, change.current.value))}</td>'
            f'<td class="num">{_e(_difference(change.name, change.difference))}</td>'
            f"<td>{_e(_evidence(change.p_value, change.current.n))}</td>"
            f"<td>{_e(verdict)}</td></tr>")
    missing = [label(c.name) for c in health.changes if c.difference is None]
    note = (f'<p class="note">Not comparable: {_e(", ".join(missing))}.</p>' if missing else "")
    if report.labeled_rows == 0:
        note += ('<p class="note">No outcome is known yet in this window, so only what needs no '
                 "outcome can be compared; estimated quality is under Model health.</p>")
    return ("<p>Every metric in the reference period and now, with the test of the change "
            "(“no clear change” means the difference could be chance, p ≥ 0.05).</p>\n"
            '<table class="changes"><thead><tr><th scope="col">Metric</th><th scope="col">'
            'Reference</th><th scope="col">Now</th><th scope="col">Change</th><th scope="col">'
            'Evidence</th><th scope="col">Verdict</th></tr></thead><tbody>\n'
            + "\n".join(rows) + f"\n</tbody></table>\n{note}")


def _service_html(report: Report, charts) -> str:
    import pandas as pd

    from mlmon_core import charts as builders

    service = report.service
    total = service.window
    facts = []
    if total.get("latency_p50") is not None:
        facts.append(f"Typical response time {total['latency_p50']:,.0f} ms (median); 95% of "
                     f"requests within {total['latency_p95']:,.0f} ms and 99% within "
                     f"{total['latency_p99']:,.0f} ms.")
    if total.get("error_rate") is not None:
        facts.append(f"{_percent(total['error_rate'])} of requests failed "
                     f"({total['errors']:,} of {total['status_rows']:,}).")
    if total.get("rows_per_hour") is not None:
        facts.append(f"{total['rows_per_hour']:,.1f} predictions per hour on average.")
    parts = [f"<p>{_e(' '.join(facts))}</p>"]
    frame = pd.DataFrame(service.buckets)
    if "latency_p95" in frame and frame["latency_p95"].notna().any():
        parts.append(_chart_html(charts, "service", builders.service_chart(
            frame, "latency_p95", "latency p95 (ms)"), "latency p95 per day"))
        parts.append('<p class="caption">The slowest 5% of requests take at least this long, '
                     "per day.</p>")
    return "\n".join(parts)


def _alerts_html(report: Report, charts) -> str:
    result = report.alerts
    if result is None:
        return _reason_html(report.reasons.get("alerts", "not computable"))
    parts = [f'<p class="advice"><strong>{_e(_sentence(result.advice.text))}</strong></p>']
    fired = result.fired
    if fired:
        items = "\n".join(
            f'<li><span class="severity severity-{_e(a.severity)}">{_e(a.severity)}</span> '
            f"<strong>{_e(a.name)}</strong>: {_e(_sentence(a.message))}</li>" for a in fired)
        parts.append(f'<ul class="alerts">\n{items}\n</ul>')
    else:
        parts.append("<p>No alert fires.</p>")
    checked = f"{len(result.alerts)} alert rule(s) checked, {len(fired)} fired"
    if result.skipped:
        names = _list_words([a.name for a in result.skipped], 6)
        checked += f"; {len(result.skipped)} could not be evaluated ({names})"
    parts.append(f'<p class="note">{_e(checked)}. Rules come from the project file and '
                 "mlmon's built-in defaults.</p>")
    return "\n".join(parts)


def _methods_html(report: Report, charts) -> str:
    from mlmon_core.health import label
    from mlmon_core.metrics import CI_METHODS

    items = [
        f"Window {report.window} and reference period {report.reference} are half-open (the end "
        f"day is excluded); segment: {report.segment_text}. Rows: {report.rows:,} in the window "
        f"({report.labeled_rows:,} with a known outcome), {report.reference_rows:,} in the "
        "reference period.",
        "Every metric has a 95% confidence interval and the number of rows (n) it rests on. "
        "Methods: " + "; ".join(f"{label(k)}: {v}" for k, v in CI_METHODS.get(report.task, {}).items())
        + ".",
        "A change between the window and the reference period is tested with a z statistic "
        "from the two periods' standard errors (the CI half-width / 1.96 where a method gives "
        "only an interval); it is called worse or better only when p < 0.05.",
    ]
    if any(card.estimated for card in report.cards):
        items.append("Estimated quality (for predictions without a known outcome) uses "
                     "confidence-based performance estimation: the score is calibrated with "
                     "isotonic regression on the reference period's labeled rows, and the expected "
                     "confusion matrix follows; its band is the sampling error only and cannot "
                     "see a change in how outcomes relate to scores.")
    if report.weak is not None:
        settings = report.weak.settings
        items.append(
            f"Weak groups: every combination of up to {settings.get('max_level')} conditions on "
            f"the inputs holding at least {settings.get('min_support')} of the rows was tested "
            f"against the rest ({report.weak.candidates_tested:,} groups; a one-sided "
            "likelihood-ratio test for error rates, Welch's t otherwise), with the "
            f"Benjamini–Hochberg false discovery rate held at {settings.get('fdr')} "
            "(q-values). Groups that merely repeat a reported one are left out.")
    if report.degraded is not None:
        items.append("Groups that got worse: the same search, testing whether a group's error "
                     "rose more than the rest's between the reference period and the window "
                     "(a difference in differences).")
    if report.quality is not None:
        expected = report.quality.expected_rows_method
        items.append("Data problems: each check compares the window with the reference period "
                     "over all rows (severity thresholds in mlmon's quality module)."
                     + (f" Expected volume: {_sentence(expected)}" if expected else ""))
    if report.drift is not None:
        items.append("Drift: " + report.drift.method)
    if report.service is not None and report.service.notes:
        items.append("Service health: " + "; ".join(report.service.notes) + ".")
    for key, reason in report.reasons.items():
        items.append(f"{SECTIONS.get(key, key)}: {_strip_reason(reason)}.")
    listed = "\n".join(f"<li>{_e(item)}</li>" for item in items)
    return f'<ul class="methods">\n{listed}\n</ul>'


def _footer(report: Report) -> str:
    took = sum(v for k, v in report.timings.items() if k != "render")
    return (f'<footer><p>Made by mlmon from {_e(report.source)} in {took:.1f} s. This file is '
            "self-contained: it needs no network to open, and its charts are drawn in the "
            "browser from the data inside it.</p></footer>")


def _reason_html(reason: str) -> str:
    return f'<p class="reason">{_e(_capital(_strip_reason(reason)))}.</p>'


def _rate(slice_report, value: float | None) -> str:
    return _percent(value) if slice_report.metric == "error_rate" else _number(value)


def _slice_chart(weak):
    import pandas as pd

    from mlmon_core import charts as builders

    frame = pd.DataFrame([{
        "label": sql.describe_segment(tuple(s.conditions[len(weak.segment):])) or "all rows",
        "value": s.value, "rest_value": s.complement_value, "rows": s.rows,
        "share": s.rows / weak.rows if weak.rows else None} for s in weak.slices])
    title = "error rate" if weak.metric == "error_rate" else weak.metric.replace("_", " ")
    return builders.slice_comparison_chart(frame, title, percent=weak.metric == "error_rate")


def _chart_html(charts: list, key: str, chart, description: str) -> str:
    import altair as alt

    chart_id = f"chart-{key}"
    # "fit" makes the whole chart, axis labels and legend included, as wide as the text column.
    sized = chart.properties(
        width=CHART_WIDTH, autosize=alt.AutoSizeParams(type="fit", contains="padding")
    ).configure_axis(labelFontSize=11, titleFontSize=12).configure_legend(
        orient="bottom", direction="horizontal", labelFontSize=12, titleFontSize=12, labelLimit=0)
    charts.append((chart_id, sized.to_dict()))
    return (f'<figure class="chart-figure"><div class="chart" id="{chart_id}-view" '
            f'data-chart="{chart_id}" role="img" aria-label="{_e(description)}"></div></figure>')


def _json_script(element_id: str, data: Any) -> str:
    text = json.dumps(_jsonable(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # No "<" may reach the script element ("</script" would end it, "<!--" change how it is
    # parsed); these characters only occur inside JSON strings, where the escapes mean the same.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{_e(element_id)}">{text}</script>'


def _javascript_html() -> str:
    try:
        bundle = vega_javascript()
    except ImportError:
        bundle = ""
    if not bundle:
        return "<script>" + _NO_BUNDLE_JS + "</script>"
    return f"<script>{_safe_inline(bundle)}</script>\n<script>{_EMBED_JS}</script>"


def _safe_inline(code: str) -> str:
    return code.replace("</script", "<\\/script").replace("<!--", "<\\!--")


# ================================================================= the JavaScript

def vega_javascript() -> str:
    """Vega, Vega-Lite and vega-embed as one classic script that defines ``vegaEmbed``.

    Bundled offline by ``vl-convert-python`` (the libraries ship inside its wheel) for the
    Vega-Lite version Altair writes, and cached on disk: building it takes seconds.
    """
    return _bundle(_vegalite_version())


@lru_cache(maxsize=4)
def _bundle(version: str | None) -> str:
    import importlib.metadata

    import vl_convert

    package = importlib.metadata.version("vl-convert-python")
    cache = _cache_folder() / f"vega-bundle-{package}-{version or 'default'}.js"
    try:
        text = cache.read_text(encoding="utf-8")
        if _BUNDLE_MARKER in text:
            return text
    except OSError:
        pass
    text = vl_convert.javascript_bundle(vl_version=version)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(cache, text.encode("utf-8"))
    except OSError:
        pass  # a read-only home only costs the rebuild next time
    return text


def _vegalite_version() -> str | None:
    import altair
    import vl_convert

    wanted = ".".join(altair.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return wanted if wanted in vl_convert.get_vegalite_versions() else None


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlmon"


def _jsonable(value: Any) -> Any:
    """Plain JSON values: ISO times, floats (NaN and infinities become null), lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "to_json") and callable(value.to_json) and not isinstance(value, type):
        return _jsonable(value.to_json())
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


_EMBED_JS = """
(function () {
  var options = {renderer: "svg", actions: false};
  document.querySelectorAll("[data-chart]").forEach(function (element) {
    var spec = JSON.parse(document.getElementById(element.getAttribute("data-chart")).textContent);
    vegaEmbed(element, spec, options).then(function () {
      element.setAttribute("data-rendered", "true");
    }).catch(function (error) {
      element.textContent = "This chart could not be drawn (" + error + "); the text above has " +
        "the same numbers.";
      console.error(error);
    });
  });
})();
"""

_NO_BUNDLE_JS = """
document.querySelectorAll("[data-chart]").forEach(function (element) {
  element.textContent = "Charts are not included: the vl-convert-python package was missing " +
    "when this report was made.";
});
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mlmon">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main class="report">
{body}
</main>
<noscript><p class="reason">Charts need JavaScript to be drawn; every number is also in the
text.</p></noscript>
{scripts}
</body>
</html>
"""

_CSS = """
:root { --ink: #1d2939; --muted: #475467; --line: #d0d5dd; --soft: #f2f4f7;
  --bad: #b42318; --bad-bg: #fef3f2; --good: #067647; --good-bg: #ecfdf3;
  --warn: #b54708; --warn-bg: #fffaeb; --accent: #1f5fa8; }
* { box-sizing: border-box; }
html { font-size: 16px; }
body { margin: 0; color: var(--ink); background: #fff;
  font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Noto Sans", "Liberation Sans", sans-serif;
  line-height: 1.55; -webkit-font-smoothing: antialiased; }
.report { max-width: 820px; margin: 0 auto; padding: 40px 28px 64px; }
header { border-bottom: 3px solid var(--ink); padding-bottom: 14px; margin-bottom: 18px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: .75rem;
  color: var(--muted); margin: 0 0 4px; }
h1 { font-size: 1.85rem; line-height: 1.2; margin: 0 0 8px; }
h2 { font-size: 1.3rem; margin: 0 0 10px; padding-top: 6px; }
h3 { font-size: 1rem; margin: 16px 0 6px; }
.meta { color: var(--muted); margin: 0; font-size: .92rem; }
nav.contents { font-size: .85rem; color: var(--muted); margin: 0 0 28px; line-height: 1.9; }
nav.contents a { color: var(--accent); text-decoration: none; margin-right: 14px;
  white-space: nowrap; }
section { margin: 0 0 34px; }
p { margin: 0 0 10px; }
ul, ol { padding-left: 1.3em; margin: 0 0 12px; }
li { margin: 0 0 6px; }
.summary { font-size: 1.05rem; }
.summary li { margin-bottom: 9px; }
.status { margin: 0 0 12px; }
.status span { display: inline-block; font-weight: 700; padding: 4px 12px; border-radius: 999px;
  font-size: .95rem; }
.status-attention span { color: var(--bad); background: var(--bad-bg); border: 1px solid #fda29b; }
.status-ok span { color: var(--good); background: var(--good-bg); border: 1px solid #75e0a7; }
.status-unknown span { color: var(--muted); background: var(--soft); border: 1px solid var(--line); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px;
  margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
  border-top: 4px solid var(--line); break-inside: avoid; }
.card p { margin: 0 0 4px; }
.card .label { font-size: .85rem; color: var(--muted); font-weight: 600; }
.card .value { font-size: 1.6rem; font-weight: 700; font-variant-numeric: tabular-nums; }
.card .detail { font-size: .8rem; color: var(--muted); }
.card .verdict { font-size: .85rem; font-weight: 600; margin-top: 6px; }
.card.verdict-worse { border-top-color: var(--bad); }
.card.verdict-worse .verdict { color: var(--bad); }
.card.verdict-better { border-top-color: var(--good); }
.card.verdict-better .verdict { color: var(--good); }
.tag { font-size: .7rem; font-weight: 600; color: var(--warn); background: var(--warn-bg);
  border-radius: 4px; padding: 1px 6px; margin-left: 8px; vertical-align: middle; }
.findings li { margin-bottom: 12px; }
.findings p { margin: 0; }
.evidence, .caption, .note { color: var(--muted); font-size: .85rem; }
.reason { color: var(--muted); font-style: italic; }
.severity-high { color: var(--bad); }
.severity-medium { color: var(--warn); }
.severity-low { color: var(--muted); }
span.severity { display: inline-block; min-width: 4.2em; font-size: .75rem; font-weight: 700;
  text-transform: uppercase; letter-spacing: .04em; }
.advice { font-size: 1.02rem; }
.chart-figure { margin: 14px 0 6px; overflow-x: auto; break-inside: avoid; }
.chart { min-height: 60px; }
.chart svg { max-width: 100%; height: auto; }
table.changes { border-collapse: collapse; width: 100%; font-size: .88rem; margin-bottom: 8px; }
table.changes th, table.changes td { text-align: left; padding: 6px 8px;
  border-bottom: 1px solid var(--line); vertical-align: top; }
table.changes thead th { border-bottom: 2px solid var(--ink); font-size: .8rem;
  color: var(--muted); }
table.changes td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
tr.verdict-worse td:last-child { color: var(--bad); font-weight: 600; }
tr.verdict-better td:last-child { color: var(--good); font-weight: 600; }
.methods { font-size: .85rem; color: var(--muted); }
footer { border-top: 1px solid var(--line); padding-top: 10px; color: var(--muted);
  font-size: .8rem; }
pre { white-space: pre-wrap; font-size: .8rem; background: var(--soft); padding: 10px; }
@page { margin: 16mm 14mm; }
@media print {
  html { font-size: 11pt; }
  .report { max-width: none; padding: 0; }
  nav.contents { display: none; }
  .cards { grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); }
  section { break-inside: auto; }
  h2, h3 { break-after: avoid; }
  .card, .chart-figure, li, tr { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""
