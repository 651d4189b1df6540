"""Feature attributions: which features drive the predictions, the errors and the drift.

Where attributions come from (``source``), in order of preference:

- ``logged``: SHAP values the serving system logged beside each prediction (columns
  ``shap__<feature>``, or another ``[columns] attribution_prefix``); optional base value column
  ``<prefix>base_value``.
- ``model``: computed here from the model file declared in mlmon.toml (``[model] path``; see
  ``mlmon_core.models`` for the supported files and what is trusted). Computed values are stored
  beside the config, in ``.mlmon/attributions/<key>/`` (Parquet parts keyed by row id; the key is
  the model file's sha256 plus what was explained), so each row is explained once. The set-up of
  each explainer is recorded there too (``explainers.json``), so a view whose rows are all stored
  does not load the model file.
- ``errors``: no production model needed. A small gradient-boosted *error model* learns to predict
  each labeled row's error from its features (out-of-fold). Features are ranked by their share of
  the extra error of the 10 % of rows it rates most error-prone (its SHAP values there against
  all rows), so a feature that matters a lot for a small group is not drowned by one that matters
  a little everywhere. Its cross-validated AUC (R² for regression) says how far to trust it, and
  an error model on the logged score alone says whether the errors sit where the model is unsure
  of itself.
- ``drift``: a *domain classifier* learns to tell reference rows from current rows; its
  cross-validated AUC is a multivariate drift score (0.5: indistinguishable) and its SHAP
  importances name the features that moved most, jointly.

Only bounded samples come to pandas: rows are picked by a hash of their id (stable from call to
call, so the cache is reused), per stratum (current/reference window, segment/rest), with one
query. Every result states how many rows it rests on (``sample_rows``) and carries bootstrap
confidence intervals over those rows.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.errors import ConfigError, FilterError
from mlmon_core.sql import Fragment, Ident, Segment

SOURCES = ("logged", "model", "errors", "drift")
Progress = Callable[[float, str], None]

DEFAULT_SAMPLE = 2_000        # rows explained per stratum (logged or model attributions)
DEFAULT_FIT_SAMPLE = 5_000    # rows per side for the domain classifier
DEFAULT_ERROR_FIT_SAMPLE = 20_000   # labeled rows for the error model (see _from_errors)
FOCUS_SHARE = 0.10            # the most error-prone share of rows the error ranking explains
MIN_AUC_GAIN = 0.02           # AUC the features must add to the score's to call it "clearly better"
DEFAULT_BACKGROUND = 50       # reference rows the linear and permutation explainers average over
BOOTSTRAP_RESAMPLES = 500
CONFIDENCE = 0.95
CV_FOLDS = 3
MIN_FIT_ROWS = 50             # fewer labeled rows (or rows per side) and no model is fitted
TOP_LEVELS = 30               # categories one-hot encoded for the error/domain models
BATCH_ROWS = 250              # rows explained per batch (progress granularity)
FAST_BATCH_ROWS = 1000        # per batch for tree and linear SHAP, fast enough that the
                              # fixed cost of each batch (the pipeline's transform) dominates
MAX_CACHE_PARTS = 32
CACHE_FOLDER = Path(".mlmon") / "attributions"
CACHE_VERSION = 1
ERROR_METHOD = ("error model (gradient boosting on the features, out-of-fold SHAP); features "
                f"ranked by their share of the extra error of the {FOCUS_SHARE:.0%} most "
                "error-prone rows")
SETTINGS_KEYS = ("sample", "fit_sample", "background", "max_evals", "cache", "seed",
                 "base_value_column")
STRATUM = "__stratum"
CURRENT, REFERENCE = "current", "reference"

_SAMPLE_BY_ID = ("SELECT * FROM (SELECT {stratum} AS __stratum, hash({id}, {seed}) AS __order, "
                 "{columns} FROM {log} WHERE {where} ORDER BY __order, {id} LIMIT {n})")
_SAMPLE_RESERVOIR = ("SELECT {stratum} AS __stratum, * FROM (SELECT {columns} FROM {log} "
                     "WHERE {where}) USING SAMPLE reservoir({n} ROWS) REPEATABLE ({seed})")
_ROW_BY_ID = "SELECT {columns} FROM {log} WHERE {condition} LIMIT 2"
_NOT_IN_SEGMENT = "NOT coalesce(({segment}), FALSE)"
_NOT_NULL = "{column} IS NOT NULL"


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class AttributionSettings:
    """The ``[attributions]`` table of mlmon.toml."""

    sample: int = DEFAULT_SAMPLE
    fit_sample: int | None = None     # None: each fitted model's own default (fit_rows)
    background: int = DEFAULT_BACKGROUND
    max_evals: int | None = None
    cache: bool = True
    seed: int = 0
    base_value_column: str | None = None

    def fit_rows(self, source: str) -> int:
        """Rows the error model (``errors``) or the domain classifier (``drift``, per side) fits on.

        ``fit_sample`` when set, else 20,000 labeled rows for the error model (a group of a few
        percent of the rows then holds enough errors for the model to isolate it) and 5,000 rows
        per side for the domain classifier.
        """
        if self.fit_sample is not None:
            return self.fit_sample
        return DEFAULT_ERROR_FIT_SAMPLE if source == "errors" else DEFAULT_FIT_SAMPLE


def settings_of(view) -> AttributionSettings:
    """Validated ``[attributions]`` settings; ``ConfigError`` naming the file and the key."""
    table: Mapping[str, Any] = view.config.attributions or {}
    where = f"{view.config.path or 'config'}: [attributions]"
    unknown = sorted(set(table) - set(SETTINGS_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys "
                          f"are: {', '.join(SETTINGS_KEYS)}")
    values: dict[str, Any] = {}
    for key in ("sample", "fit_sample", "background", "max_evals", "seed"):
        if key in table:
            value = table[key]
            low = 0 if key == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{where} {key}: expected an integer ≥ {low}, got {value!r}")
            values[key] = value
    if "cache" in table:
        if not isinstance(table["cache"], bool):
            raise ConfigError(f"{where} cache: expected true or false, got {table['cache']!r}")
        values["cache"] = table["cache"]
    if "base_value_column" in table:
        column = table["base_value_column"]
        if not isinstance(column, str) or column not in view.columns:
            raise ConfigError(f"{where} base_value_column: {column!r} is not a column of the log")
        values["base_value_column"] = column
    return AttributionSettings(**values)


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class ModelQuality:
    """How well a fitted explainer model (error model or domain classifier) predicts."""

    metric: str                  # "auc" (classification) or "r2" (regression)
    value: float | None
    rows: int
    positives: int | None        # rows of class 1 (errors, or current rows)
    folds: int
    strength: str                # "strong", "moderate", "weak" or "none"
    reason: str | None = None

    def describe(self) -> str:
        """Plain words: ``error model AUC 0.74 (moderate; 3-fold CV on 8,000 rows)``."""
        if self.value is None:
            return f"not computable because {self.reason}"
        name = "AUC" if self.metric == "auc" else "R²"
        text = f"{name} {self.value:.3f} ({self.strength}; {self.folds}-fold CV on {self.rows:,} rows)"
        if self.strength in ("weak", "none"):
            text += ": the features barely predict it, so do not over-read the ranking"
        return text

    def to_json(self) -> dict[str, Any]:
        """Plain form for the CLI."""
        return {"metric": self.metric, "value": self.value, "rows": self.rows,
                "positives": self.positives, "folds": self.folds, "strength": self.strength,
                "reason": self.reason, "text": self.describe()}


@dataclass(frozen=True)
class ErrorFocus:
    """The rows the error ranking explains: the share the error model rates most error-prone.

    The rows are picked by the out-of-fold error model, so their observed error is not flattered
    by overfitting: if they err no more than the rest, no group of rows stands out.
    """

    rows: int
    total_rows: int
    error: float             # their observed error rate (or mean absolute error)
    overall_error: float     # the same over all rows
    classify: bool           # error rate (True) or mean absolute error (False)

    @property
    def excess(self) -> float:
        """How much more they err than the average row."""
        return self.error - self.overall_error

    def describe(self) -> str:
        """``the 1,534 rows (10 %) the error model rates most error-prone err 44.1 % of the time
        vs 16.0 % over all 15,335 rows``."""
        share = self.rows / self.total_rows if self.total_rows else 0.0
        if self.classify:
            how = (f"err {self.error:.1%} of the time vs {self.overall_error:.1%} over all "
                   f"{self.total_rows:,} rows")
        else:
            how = (f"have a mean absolute error of {self.error:.4g} vs {self.overall_error:.4g} "
                   f"over all {self.total_rows:,} rows")
        text = (f"the {self.rows:,} rows ({share:.0%}) the error model rates most error-prone "
                f"{how}")
        if self.excess <= 0:
            text += ": they err no more than the rest, so no group of rows stands out and the " \
                    "ranking means little"
        return text

    def to_json(self) -> dict[str, Any]:
        """Plain form for the CLI."""
        return {"rows": self.rows, "total_rows": self.total_rows, "error": self.error,
                "overall_error": self.overall_error, "excess": self.excess,
                "metric": "error rate" if self.classify else "mean absolute error",
                "text": self.describe()}


@dataclass(frozen=True)
class ConfidenceBaseline:
    """How well the production model's own score alone predicts the errors (the *control*).

    An error model on the score alone (out-of-fold, like the features' error model) against the
    features' error model: ``difference`` is the features' AUC minus the score's, with DeLong's
    CI for two AUCs on the same rows. When the score does as well, the errors sit where the
    model is unsure of itself, and the ranking says where those rows are; when the features do
    clearly better, some errors happen where the model is confident.
    """

    column: str
    quality: ModelQuality                # the score-only error model
    features_value: float | None         # the features' error model (same metric)
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    def describe(self) -> str:
        """Plain words comparing the two error models."""
        if self.quality.value is None:
            return f"model confidence: not computable because {self.quality.reason}"
        own = f"{self.column} alone predicts errors with AUC {self.quality.value:.3f}"
        if self.features_value is None or self.difference is None:
            return f"model confidence: {own}"
        gap = (f"the features' error model {self.features_value:.3f}; difference "
               f"{self.difference:+.3f}, 95% CI {_signed(self.ci_low)} to {_signed(self.ci_high)}")
        if _auc_strength(self.features_value) == "none":
            return (f"model confidence: {own}, {gap}. The features barely predict errors at all, "
                    "so there is nothing to compare")
        if self.clearly_beaten:
            return (f"model confidence: {own}, {gap}. The features predict errors clearly better "
                    "than the model's own score: some errors happen where the model is confident "
                    "(a changed relation, a group it never learned, or label problems)")
        return (f"model confidence: {own}, {gap}. The model's own score predicts errors about as "
                "well as the features: the errors sit mostly where the model is unsure of itself "
                "(scores near the threshold), and the ranking says where those rows are")

    @property
    def clearly_beaten(self) -> bool:
        """The features' error model beats the score's by at least MIN_AUC_GAIN, beyond noise
        (and predicts errors at all: AUC at least 0.03 from 0.5)."""
        return self.difference is not None and self.ci_low is not None and \
            self.features_value is not None and _auc_strength(self.features_value) != "none" \
            and self.ci_low > 0 and self.difference >= MIN_AUC_GAIN

    def to_json(self) -> dict[str, Any]:
        """Plain form for the CLI."""
        return {"column": self.column, "metric": self.quality.metric, "value": self.quality.value,
                "features_value": self.features_value, "difference": self.difference,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "rows": self.quality.rows,
                "clearly_beaten": self.clearly_beaten, "reason": self.quality.reason,
                "text": self.describe()}


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


@dataclass(frozen=True)
class Importance:
    """Mean |SHAP| per feature with bootstrap CIs, optionally against a reference sample.

    ``features`` columns: feature, mean_abs, ci_low, ci_high, reference_mean_abs,
    reference_ci_low, reference_ci_high, difference, difference_ci_low, difference_ci_high
    (reference and difference columns are NaN without a reference). Sorted by mean_abs, or by
    |difference| when there is a reference.

    For ``source == "errors"`` the table is sorted by ``error_share`` (with error_share_ci_low,
    error_share_ci_high): each feature's share of the extra error of the most error-prone rows
    (``focus``), in the error's units (error rate, or absolute error), possibly negative;
    ``mean_abs`` stays the error model's mean |SHAP| over all rows and ``focus_shap`` is the
    unscaled SHAP difference. ``ranking`` says this in words, and ``control`` compares with the
    model's own score.
    """

    source: str
    window: Window
    segment: Segment
    features: pd.DataFrame
    sample_rows: int
    reference: Window | None = None
    reference_label: str | None = None
    reference_rows: int | None = None
    model_quality: ModelQuality | None = None
    output_space: str | None = None
    method: str | None = None
    computed_rows: int = 0
    cached_rows: int = 0
    reason: str | None = None
    notes: tuple[str, ...] = ()
    compared: bool = False       # reference/difference columns are filled
    ranking: str | None = None   # what the order of ``features`` means, in plain words
    focus: ErrorFocus | None = None
    control: ConfidenceBaseline | None = None

    def largest_changes(self, limit: int = 10) -> pd.DataFrame:
        """The features whose importance changed most against the reference (|difference|)."""
        if not self.compared or self.features.empty:
            return self.features.iloc[0:0]
        order = self.features["difference"].abs().sort_values(ascending=False).index
        return self.features.loc[order].head(limit).reset_index(drop=True)

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon explain --json`` object."""
        records = []
        for row in self.features.to_dict(orient="records"):
            records.append({key: _number(value) if key != "feature" else value
                            for key, value in row.items()})
        return {
            "source": self.source, "window": self.window.to_json(),
            "reference_window": self.reference.to_json() if self.reference is not None else None,
            "reference_label": self.reference_label,
            "segment": sql.segment_to_json(self.segment),
            "segment_text": sql.describe_segment(self.segment),
            "sample_rows": self.sample_rows, "reference_rows": self.reference_rows,
            "features": records,
            "model_quality": self.model_quality.to_json() if self.model_quality else None,
            "output_space": self.output_space, "method": self.method,
            "computed_rows": self.computed_rows, "cached_rows": self.cached_rows,
            "compared": self.compared, "reason": self.reason, "notes": list(self.notes),
            "ranking": self.ranking,
            "focus": self.focus.to_json() if self.focus else None,
            "control": self.control.to_json() if self.control else None,
        }


@dataclass(frozen=True)
class RowExplanation:
    """One prediction's attribution (waterfall data): base value + Σ shap = prediction."""

    id: Any
    source: str
    base_value: float | None
    prediction: float | None
    output_space: str | None
    features: pd.DataFrame       # feature, value, shap; largest |shap| first
    logged_score: float | None = None
    method: str | None = None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon explain-row --json`` object."""
        return {
            "id": _number(self.id), "source": self.source, "base_value": _number(self.base_value),
            "prediction": _number(self.prediction), "output_space": self.output_space,
            "features": [{"feature": r["feature"], "value": _number(r["value"]),
                          "shap": _number(r["shap"])}
                         for r in self.features.to_dict(orient="records")],
            "logged_score": _number(self.logged_score), "method": self.method,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Dependence:
    """How one feature's attribution depends on its value, coloured by a second feature.

    ``points`` columns: id, value, shap, color_value (one row per sampled row).
    """

    feature: str
    color_by: str | None
    kind: str                   # the feature's kind: numerical, categorical or boolean
    points: pd.DataFrame
    source: str
    sample_rows: int
    output_space: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form."""
        return {"feature": self.feature, "color_by": self.color_by, "kind": self.kind,
                "source": self.source, "sample_rows": self.sample_rows,
                "output_space": self.output_space, "reason": self.reason,
                "points": [{k: _number(v) for k, v in r.items()}
                           for r in self.points.to_dict(orient="records")]}


@dataclass
class AttributedSample:
    """Sampled rows with their attributions: ``values[i, j]`` is row i's SHAP for feature j."""

    source: str
    features: tuple[str, ...]
    rows: pd.DataFrame               # __stratum, id (when the log has one), the feature values
    values: np.ndarray
    base: np.ndarray | None = None
    output: np.ndarray | None = None
    output_space: str | None = None
    method: str | None = None
    computed_rows: int = 0
    cached_rows: int = 0
    quality: ModelQuality | None = None
    reason: str | None = None
    notes: tuple[str, ...] = ()
    learned: np.ndarray | None = None      # errors: each row's error the error model learned
    control: ConfidenceBaseline | None = None

    def stratum(self, name: str) -> np.ndarray:
        """The row positions of one stratum (``current`` or ``reference``)."""
        return np.flatnonzero(self.rows[STRATUM].to_numpy() == name)


# ---------------------------------------------------------------- sources

def available_sources(view) -> dict[str, str | None]:
    """Each source → None when usable here, else the reason it is not (for pickers)."""
    roles = view.roles
    prefix = view.config.columns.attribution_prefix
    errors_reason = None
    if not roles.target:
        errors_reason = "the log has no target (ground truth) column"
    elif not roles.prediction and not (roles.score and view.task == "binary"):
        errors_reason = "the log has no prediction column"
    return {
        "logged": None if roles.attributions else
        f"the log has no logged attributions ({prefix}<feature> columns)",
        "model": None if view.config.model.path else "mlmon.toml declares no [model] path",
        "errors": errors_reason,
        "drift": None if roles.features else "the log has no feature columns",
    }


def resolve_source(view, source: str | None) -> str:
    """``auto`` (or None) → logged, else model; an explicit source is checked to be usable."""
    if source in (None, "auto"):
        usable = available_sources(view)
        for candidate in ("logged", "model"):
            if usable[candidate] is None:
                return candidate
        raise ConfigError(_no_attributions_message(view))
    if source not in SOURCES:
        raise FilterError(f"source {source!r} is not one of auto, {', '.join(SOURCES)}")
    reason = available_sources(view)[source]
    if reason is not None:
        if source in ("logged", "model"):
            raise ConfigError(_no_attributions_message(view, source))
        raise ConfigError(f"attributions from {source}: not available because {reason}")
    return source


def _no_attributions_message(view, wanted: str | None = None) -> str:
    prefix = view.config.columns.attribution_prefix
    where = view.config.path or "mlmon.toml"
    start = {None: "no model and no logged attributions",
             "logged": f"the log has no logged attributions ({prefix}<feature> columns)",
             "model": f"{where} declares no model file"}[wanted]
    return (f"{start}. To add either: log SHAP values as columns named {prefix}<feature> (or set "
            "[columns] attribution_prefix), or declare the model under [model] with "
            "path = \"model.skops\" (scikit-learn via skops, LightGBM .txt, XGBoost .json). The "
            "error and drift explanations (source errors or drift) work without either.")


# ---------------------------------------------------------------- sampling

@dataclass(frozen=True)
class _Stratum:
    name: str
    where: Fragment


def _strata(view, window: Window | None, segment: Segment, reference: Window | None = None,
            versus_rest: bool = False, extra: Sequence[Fragment] = (),
            within: Segment = ()) -> list[_Stratum]:
    """The current stratum, plus the reference window's or the rest of the window's rows.

    ``within`` (like ``extra``) narrows every stratum: the rest is then ``within`` and not
    ``segment``.
    """
    within = tuple(within or ())
    current = _Stratum(CURRENT, view.where(window, within + tuple(segment), extra=extra))
    if versus_rest:
        inside = sql.compile_segment(segment, view.column_types).fragment
        rest = sql.render(_NOT_IN_SEGMENT, segment=inside)
        return [current, _Stratum(REFERENCE, view.where(window, within, extra=[rest, *extra]))]
    if reference is not None:
        return [current, _Stratum(REFERENCE, view.where(reference, within + tuple(segment),
                                                        extra=extra))]
    return [current]


def sample_rows(view, strata: Sequence[_Stratum], columns: Sequence[str], rows: int,
                seed: int = 0) -> pd.DataFrame:
    """Up to ``rows`` rows per stratum, chosen by a hash of the id (stable across calls).

    Without an id column the rows come from a repeatable reservoir sample. One query for all
    strata; a ``__stratum`` column names each row's stratum.
    """
    id_column = view.roles.id
    wanted = list(dict.fromkeys(([id_column] if id_column else []) + list(columns)))
    branches = []
    for stratum in strata:
        template = _SAMPLE_BY_ID if id_column else _SAMPLE_RESERVOIR
        parts = dict(stratum=sql.param(stratum.name), columns=sql.identifiers(wanted),
                     log=view.relation, where=stratum.where, n=int(rows), seed=int(seed))
        if id_column:
            parts["id"] = Ident(id_column)
        branches.append(sql.render(template, **parts))
    frame = view.fetch_df(sql.join(branches, " UNION ALL "))
    if id_column:   # UNION ALL does not promise an order; results must not depend on it
        frame = frame.sort_values([STRATUM, "__order", id_column], kind="stable") \
            .drop(columns="__order")
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------- logged attributions

def _logged(view, strata, features: Sequence[str] | None, settings: AttributionSettings,
            rows: int) -> AttributedSample:
    mapping = view.roles.attributions
    features = tuple(f for f in (features or view.roles.features) if f in mapping)
    first = Ident(mapping[features[0]])
    not_null = sql.render(_NOT_NULL, column=first)
    strata = [replace(s, where=sql.conjunction([s.where, not_null])) for s in strata]
    base_column = _base_value_column(view, settings)
    extras = [c for c in (base_column, view.roles.score) if c]
    frame = sample_rows(view, strata, list(features) + [mapping[f] for f in features] + extras,
                        rows, settings.seed)
    values = frame[[mapping[f] for f in features]].apply(pd.to_numeric, errors="coerce") \
        .to_numpy(dtype=float)
    base = frame[base_column].to_numpy(dtype=float) if base_column else None
    output = base + np.nansum(values, axis=1) if base is not None else None
    return AttributedSample("logged", features, frame, values, base, output,
                            output_space="as logged", method="logged by the serving system",
                            cached_rows=len(frame))


def _base_value_column(view, settings: AttributionSettings) -> str | None:
    if settings.base_value_column:
        return settings.base_value_column
    prefix = view.config.columns.attribution_prefix
    for name in ("base_value", "expected_value", "base"):
        if prefix + name in view.columns:
            return prefix + name
    return None


# ---------------------------------------------------------------- model attributions

@dataclass
class _ModelContext:
    """A loaded model, its explainer, and where its computed attributions are kept."""

    explainer: Any
    inputs: Any
    cache: "AttributionCache | None"
    notes: tuple[str, ...]


_CONTEXTS: dict[tuple, _ModelContext] = {}


def _model_context(view, settings: AttributionSettings) -> _ModelContext:
    """The model's explainer for this log, built once per (log, model file, settings).

    When an earlier run recorded this explainer's set-up beside the stored attributions, the
    model file is not even loaded until a row that is not stored must be explained."""
    from mlmon_core.models import model_digest

    digest = model_digest(view.config.model.path)
    key = (str(view.config.path), view.config.source.predictions, digest, settings,
           view.task, str(view.positive_label), view.roles.features)
    context = _CONTEXTS.get(key)
    if context is None:
        context = _recorded_context(view, settings, digest) or \
            _loaded_context(view, settings, digest)
        _CONTEXTS[key] = context
    if context.explainer.background is None or callable(context.explainer.background):
        context.explainer.background = _background_loader(view, context.inputs.features, settings)
    return context


def _build_explainer(view, settings: AttributionSettings) -> tuple[Any, Any, Any]:
    """Load the model file and build its explainer: (model, inputs, explainer)."""
    from mlmon_core.models import ModelExplainer, load_model, match_inputs

    model = load_model(view.config.model.path, trust=view.config.model.trust)
    inputs = match_inputs(model, list(view.columns), list(view.roles.features))
    explainer = ModelExplainer(model, inputs.features, view.task, view.positive_label,
                               max_evals=settings.max_evals, seed=settings.seed)
    return model, inputs, explainer


def _loaded_context(view, settings: AttributionSettings, digest: str) -> _ModelContext:
    model, inputs, explainer = _build_explainer(view, settings)
    notes = list(inputs.notes) + _version_notes(view, model.path.name)
    cache = _open_cache(view, settings, digest, model.path, explainer, notes)
    if cache is not None:
        _record_explainer(view, settings, digest, explainer, inputs)
    return _ModelContext(explainer, inputs, cache, tuple(notes))


# ---------------------------------------------------------------- recorded explainers

MANIFEST_NAME = "explainers.json"


@dataclass(frozen=True)
class _RecordedInputs:
    features: tuple[str, ...]
    notes: tuple[str, ...]


class DeferredExplainer:
    """Stands in for a ``ModelExplainer`` whose set-up (features, explained class, method) an
    earlier run recorded: rows whose attributions are stored need no model, so the model file is
    loaded and its explainer built only when a row must be explained."""

    def __init__(self, features: Sequence[str], explained_class: Any, method: str,
                 build: Callable[[], Any]):
        self.features = tuple(features)
        self.explained_class = explained_class
        self.method = method
        self.background: Any = None
        self._build = build
        self._real: Any = None

    @property
    def loaded(self) -> bool:
        """Whether the model file has been loaded."""
        return self._real is not None

    @property
    def output_space(self) -> str | None:
        """Known once the model is loaded; until then the store's meta says it."""
        return self._real.output_space if self._real is not None else None

    @property
    def description(self) -> str:
        """The method in words (the real explainer's once loaded)."""
        return self._real.description if self._real is not None else f"{self.method} SHAP"

    def explain(self, frame: pd.DataFrame):
        """The real explainer's ``explain``, building it on first use."""
        if self._real is None:
            real = self._build()
            real.background = self.background
            self._real = real
        return self._real.explain(frame)


def _manifest_path(view) -> Path:
    return view.config.folder / CACHE_FOLDER / MANIFEST_NAME


def _manifest_key(view, settings: AttributionSettings, digest: str) -> str:
    import hashlib

    what = {"model": digest, "settings": repr(settings), "task": view.task,
            "positive": str(view.positive_label), "features": list(view.roles.features),
            "columns": {name: info.duck_type for name, info in view.columns.items()},
            "trust": bool(view.config.model.trust), "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def _read_manifest(view) -> dict[str, Any]:
    try:
        data = json.loads(_manifest_path(view).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record_explainer(view, settings: AttributionSettings, digest: str, explainer,
                      inputs) -> None:
    """Remember the explainer's set-up for this model file and log (atomically replaced;
    a failure to write only costs the next run a model load)."""
    entries = _read_manifest(view)
    entries[_manifest_key(view, settings, digest)] = {
        "features": list(explainer.features), "class": str(explainer.explained_class),
        "method": explainer.method, "inputs": list(inputs.features),
        "notes": list(inputs.notes)}
    path = _manifest_path(view)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        temporary.write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass


def _recorded_context(view, settings: AttributionSettings, digest: str) -> _ModelContext | None:
    """A context from the recorded set-up, without loading the model; None if none recorded."""
    if not settings.cache or not view.roles.id:
        return None
    entry = _read_manifest(view).get(_manifest_key(view, settings, digest))
    if not isinstance(entry, dict):
        return None
    try:
        explainer = DeferredExplainer(entry["features"], entry["class"], entry["method"],
                                      lambda: _build_explainer(view, settings)[2])
        inputs = _RecordedInputs(tuple(entry["inputs"]), tuple(entry["notes"]))
    except (KeyError, TypeError):
        return None
    path = Path(view.config.model.path).expanduser()
    notes = list(inputs.notes) + _version_notes(view, path.name)
    cache = _open_cache(view, settings, digest, path, explainer, notes)
    return _ModelContext(explainer, inputs, cache, tuple(notes))


def _background_loader(view, features: Sequence[str], settings: AttributionSettings) -> Callable:
    """Reference-window rows for the linear and permutation explainers, fetched when needed."""

    def load() -> pd.DataFrame:
        from mlmon_core.windows import reference_window

        strata = [_Stratum(REFERENCE, view.where(reference_window(view)))]
        return sample_rows(view, strata, features, settings.background, settings.seed + 1)

    return load


def _version_notes(view, model_name: str) -> list[str]:
    if not view.roles.model:
        return []
    versions = view.model_counts()
    if len(versions) < 2:
        return []
    return [f"the log holds {len(versions)} model versions ({', '.join(list(versions)[:5])}); "
            f"every row is explained with the model file {model_name} (filter on "
            f"{view.roles.model} to match)"]


def _open_cache(view, settings, digest: str, model_path: Path, explainer,
                notes: list[str]) -> "AttributionCache | None":
    if not settings.cache or not view.roles.id:
        if not view.roles.id:
            notes.append("the log has no id column, so computed attributions are not stored")
        return None
    from mlmon_core.windows import reference_window

    identity = {"version": CACHE_VERSION, "model": digest, "features": explainer.features,
                "class": str(explainer.explained_class), "method": explainer.method,
                "task": view.task}
    if explainer.method != "tree":
        identity |= {"background": settings.background, "seed": settings.seed,
                     "reference": str(reference_window(view)), "max_evals": settings.max_evals}
    folder = view.config.folder / CACHE_FOLDER
    return AttributionCache(folder, identity, {"model_path": str(model_path)})


def _from_model(view, strata, settings: AttributionSettings, rows: int,
                progress: Progress | None) -> AttributedSample:
    context = _model_context(view, settings)
    explainer = context.explainer
    extras = [view.roles.score] if view.roles.score else []
    _report(progress, 0.02, "sampling rows")
    frame = sample_rows(view, strata, list(explainer.features) + extras, rows, settings.seed)
    values, base, output, computed, notes = _explain_frame(view, context, frame, progress)
    return AttributedSample("model", explainer.features, frame, values, base, output,
                            output_space=_output_space(context), method=_method(context),
                            computed_rows=computed, cached_rows=len(frame) - computed,
                            notes=context.notes + notes)


def _explain_frame(view, context: _ModelContext, frame: pd.DataFrame,
                   progress: Progress | None) -> tuple:
    """SHAP values for the frame's rows: from the cache where stored, else computed (and stored)."""
    explainer, cache = context.explainer, context.cache
    n, width = len(frame), len(explainer.features)
    values, base, output = np.full((n, width), np.nan), np.full(n, np.nan), np.full(n, np.nan)
    done = np.zeros(n, dtype=bool)
    id_column = view.roles.id
    if cache is not None and n:
        _report(progress, 0.05, "reading stored attributions")
        stored = cache.lookup(frame[id_column])
        if stored is not None and len(stored):
            position = pd.Index(stored["id"]).get_indexer(frame[id_column])
            hit = position >= 0
            values[hit] = stored[cache.value_columns(explainer.features)].to_numpy(float)[position[hit]]
            base[hit] = stored["base_value"].to_numpy(float)[position[hit]]
            output[hit] = stored["output"].to_numpy(float)[position[hit]]
            done = hit
    todo = np.flatnonzero(~done)
    batch_rows = FAST_BATCH_ROWS if explainer.method in ("tree", "linear") else BATCH_ROWS
    for start in range(0, len(todo), batch_rows):
        batch = todo[start:start + batch_rows]
        _report(progress, 0.1 + 0.85 * start / max(len(todo), 1),
                f"explaining rows {start + 1:,}–{start + len(batch):,} of {len(todo):,} "
                f"({explainer.method} SHAP)")
        result = explainer.explain(frame.iloc[batch])
        values[batch], base[batch], output[batch] = result.values, result.base, result.output
    notes: tuple[str, ...] = ()
    if len(todo):
        notes = _agreement_note(view, explainer, frame.iloc[todo], output[todo])
        if cache is not None:
            _report(progress, 0.96, "storing computed attributions")
            cache.append(frame[id_column].iloc[todo], explainer.features, values[todo], base[todo],
                         output[todo], {"output_space": explainer.output_space,
                                        "method": explainer.description})
    return values, base, output, len(todo), notes


def _agreement_note(view, explainer, frame: pd.DataFrame, output: np.ndarray) -> tuple[str, ...]:
    """A note when the model file's scores differ from the logged scores (wrong model file?)."""
    score = view.roles.score
    if not score or score not in frame or explainer.output_space not in ("log-odds", "probability"):
        return ()
    logged = pd.to_numeric(frame[score], errors="coerce").to_numpy(dtype=float)
    mine = 1 / (1 + np.exp(-output)) if explainer.output_space == "log-odds" else output
    comparable = np.isfinite(logged) & np.isfinite(mine)
    if not comparable.any():
        return ()
    differs = float(np.mean(np.abs(logged[comparable] - mine[comparable]) > 1e-3))
    if differs <= 0.05:
        return ()
    return (f"the model file's scores differ from the logged {score} on {differs:.0%} of the "
            f"{int(comparable.sum()):,} newly explained rows: is [model] path the model that made "
            "them?",)


def _output_space(context: _ModelContext) -> str | None:
    """The explained output's space; from the store when every row came from it."""
    if context.explainer.output_space is None and context.cache is not None:
        return context.cache.meta.get("output_space")
    return context.explainer.output_space


def _method(context: _ModelContext) -> str:
    explainer = context.explainer
    if explainer.output_space is None and context.cache is not None:
        return context.cache.meta.get("method") or explainer.description
    return explainer.description


# ---------------------------------------------------------------- the cache

class AttributionCache:
    """Computed SHAP values of one model and explanation set-up, keyed by row id.

    A folder of Parquet parts (``part-*.parquet``) plus ``meta.json``. Appends write a new part
    through a temporary file and a rename, so readers never see half a file and concurrent
    writers never overwrite each other; duplicates of an id are harmless (the first is used).
    """

    def __init__(self, root: Path, identity: Mapping[str, Any], info: Mapping[str, Any]):
        import hashlib

        text = json.dumps(identity, sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:24]
        self.folder = Path(root) / self.key
        self.identity = dict(identity)
        self.info = dict(info)

    @property
    def meta(self) -> dict[str, Any]:
        """What the stored values are (output space, method, model path)."""
        try:
            return json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    @staticmethod
    def value_columns(features: Sequence[str]) -> list[str]:
        """The stored column of each feature's SHAP value."""
        return [f"shap:{f}" for f in features]

    def parts(self) -> list[Path]:
        """The stored part files."""
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def lookup(self, ids: pd.Series) -> pd.DataFrame | None:
        """The stored rows among ``ids`` (columns id, base_value, output, shap:<feature>...)."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        parts = self.parts()
        if not parts:
            return None
        wanted = pa.array(pd.Series(ids).dropna().unique().tolist())
        try:
            dataset = ds.dataset([str(p) for p in parts], format="parquet")
            table = dataset.to_table(filter=ds.field("id").isin(wanted))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
            return None   # an unreadable or incompatible store is recomputed, not trusted
        frame = table.to_pandas()
        return frame.drop_duplicates("id", keep="first").reset_index(drop=True)

    def append(self, ids: pd.Series, features: Sequence[str], values: np.ndarray,
               base: np.ndarray, output: np.ndarray, meta: Mapping[str, Any]) -> bool:
        """Store newly computed rows atomically; False (and nothing stored) if it cannot write."""
        frame = pd.DataFrame(values, columns=self.value_columns(features))
        frame.insert(0, "output", output)
        frame.insert(0, "base_value", base)
        frame.insert(0, "id", pd.Series(ids).to_numpy())
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_meta(meta)
            name = f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
            self._write_atomically(frame, self.folder / name)
            if len(self.parts()) > MAX_CACHE_PARTS:
                self.compact()
        except OSError:
            return False
        return True

    def compact(self) -> None:
        """Merge the parts into one (written before the old parts are removed)."""
        parts = self.parts()
        if len(parts) < 2:
            return
        frames = [pd.read_parquet(p) for p in parts]
        merged = pd.concat(frames, ignore_index=True).drop_duplicates("id", keep="first")
        self._write_atomically(merged, self.folder / f"part-{time.time_ns():020d}-{os.getpid()}"
                                                     f"-merged.parquet")
        for part in parts:
            part.unlink(missing_ok=True)

    def _write_meta(self, meta: Mapping[str, Any]) -> None:
        path = self.folder / "meta.json"
        if path.exists():
            return
        payload = {"identity": self.identity, **self.info, **meta}
        temp = self.folder / f".meta.{os.getpid()}.tmp"
        temp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        os.replace(temp, path)

    @staticmethod
    def _write_atomically(frame: pd.DataFrame, path: Path) -> None:
        temp = path.with_name(f".{path.name}.tmp")
        try:
            frame.to_parquet(temp, index=False)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)


# ---------------------------------------------------------------- fitted explainer models

def _design(frame: pd.DataFrame, features: Sequence[str], kinds: Mapping[str, str]
            ) -> tuple[np.ndarray, np.ndarray]:
    """A float matrix for the error/domain models and, per column, the feature it encodes.

    Numbers and booleans stay one column (missing stays NaN: the learner handles it); a
    categorical feature becomes one indicator column per frequent category (at most TOP_LEVELS),
    so one split can isolate a category. SHAP values of a feature's columns are summed back.
    """
    columns: list[np.ndarray] = []
    groups: list[int] = []
    for j, feature in enumerate(features):
        series = frame[feature]
        if kinds.get(feature) == "categorical" or not _numeric_like(series):
            text = series.astype(object).where(series.notna(), None)
            levels = pd.Series(text).value_counts().index[:TOP_LEVELS]
            for level in levels:
                columns.append((text == level).to_numpy(dtype=float))
                groups.append(j)
            if len(levels) == 0:
                columns.append(np.zeros(len(frame)))
                groups.append(j)
        else:
            numbers = pd.to_numeric(series.astype(object), errors="coerce").to_numpy(
                dtype=float, copy=True)
            numbers[~np.isfinite(numbers)] = np.nan
            columns.append(numbers)
            groups.append(j)
    matrix = np.column_stack(columns) if columns else np.zeros((len(frame), 0))
    return matrix, np.asarray(groups, dtype=int)


def _kinds(view) -> dict[str, str]:
    return {name: info.kind for name, info in view.columns.items()}


def _numeric_like(series: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype))


def _learner(classify: bool, seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    options = dict(max_iter=150, learning_rate=0.08, max_leaf_nodes=15, min_samples_leaf=20,
                   l2_regularization=1.0, early_stopping=False, random_state=seed)
    return HistGradientBoostingClassifier(**options) if classify else \
        HistGradientBoostingRegressor(**options)


def _fit_and_explain(matrix: np.ndarray, groups: np.ndarray, n_features: int, target: np.ndarray,
                     classify: bool, seed: int, progress: Progress | None, what: str,
                     explain: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, ModelQuality]:
    """Out-of-fold quality, predictions and (``explain``) SHAP values per feature."""
    from threadpoolctl import threadpool_limits

    # One OpenMP thread: on a busy machine (the app's threads, other processes) more threads
    # spin-wait and fit many times slower; one thread is never far from the best case.
    with threadpool_limits(limits=1, user_api="openmp"):
        return _fit_and_explain_unthreaded(matrix, groups, n_features, target, classify, seed,
                                           progress, what, explain)


def _without_empty_columns(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns missing in every training row (an all-null feature) set to 0 on both sides: the
    gradient-boosting binner cannot bin a column with no value, and a constant column takes no
    split, so its attribution is exactly 0."""
    empty = np.isnan(train).all(axis=0)
    if not empty.any():
        return train, test
    train, test = train.copy(), test.copy()
    train[:, empty] = 0.0
    test[:, empty] = 0.0
    return train, test


def _fit_and_explain_unthreaded(matrix, groups, n_features, target, classify, seed, progress,
                                what, explain=True):
    """Out-of-fold: each fold's model scores and explains the rows it did not see.

    The quality (AUC or R²) is that of the out-of-fold predictions, and every row's SHAP values
    come from a model that was not fitted on it, so neither is flattered by overfitting. Without
    ``explain`` the SHAP values (and base values) stay zero: only the predictions are made.
    """
    import shap
    from sklearn.metrics import r2_score, roc_auc_score
    from sklearn.model_selection import KFold, StratifiedKFold

    rows = len(target)
    splitter = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed) if classify else \
        KFold(CV_FOLDS, shuffle=True, random_state=seed)
    values = np.zeros((rows, n_features))
    base, output, predicted = np.zeros(rows), np.zeros(rows), np.zeros(rows)
    indicator = np.zeros((matrix.shape[1], n_features))
    indicator[np.arange(matrix.shape[1]), groups] = 1.0
    for fold, (train, test) in enumerate(splitter.split(matrix, target)):
        _report(progress, 0.2 + 0.75 * fold / CV_FOLDS,
                f"fitting the {what}, fold {fold + 1} of {CV_FOLDS} ({rows:,} rows)")
        fitted, scored = _without_empty_columns(matrix[train], matrix[test])
        model = _learner(classify, seed).fit(fitted, target[train])
        if explain:
            explainer = shap.TreeExplainer(model)
            raw = np.asarray(explainer.shap_values(scored, check_additivity=False),
                             dtype=float)
            values[test] = raw @ indicator
            base[test] = float(np.atleast_1d(explainer.expected_value)[-1])
        if classify:
            output[test] = model.decision_function(scored)
            predicted[test] = model.predict_proba(scored)[:, 1]
        else:
            output[test] = predicted[test] = model.predict(scored)
    if classify:
        value = float(roc_auc_score(target, predicted))
        quality = ModelQuality("auc", value, rows, int(target.sum()), CV_FOLDS, _auc_strength(value))
    else:
        value = float(r2_score(target, predicted))
        quality = ModelQuality("r2", value, rows, None, CV_FOLDS, _r2_strength(value))
    return values, base, output, quality


def _auc_strength(auc: float) -> str:
    distance = abs(auc - 0.5)
    if distance >= 0.25:
        return "strong"
    if distance >= 0.1:
        return "moderate"
    return "weak" if distance >= 0.03 else "none"


def _r2_strength(r2: float) -> str:
    if r2 >= 0.3:
        return "strong"
    if r2 >= 0.1:
        return "moderate"
    return "weak" if r2 >= 0.02 else "none"


def row_errors(view, frame: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """Each labeled row's error: 0/1 misclassification (classify=True) or |prediction − target|."""
    roles = view.roles
    target = frame[roles.target]
    if view.task == "regression":
        predicted = pd.to_numeric(frame[roles.prediction], errors="coerce").to_numpy(float)
        actual = pd.to_numeric(target, errors="coerce").to_numpy(float)
        return np.abs(predicted - actual), False
    if roles.prediction:
        predicted = frame[roles.prediction]
        return (~_same_values(predicted, target)).astype(float), True
    positive = _same_values(target, pd.Series([view.positive_label] * len(frame), index=frame.index))
    scored = pd.to_numeric(frame[roles.score], errors="coerce").to_numpy(float)
    predicted_positive = scored >= view.config.model.threshold
    return (predicted_positive != positive).astype(float), True


def _same_values(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Element-wise equality of two label columns, tolerant of 1 vs 1.0 vs "1"."""
    left = pd.to_numeric(a.astype(object), errors="coerce").to_numpy(float)
    right = pd.to_numeric(b.astype(object), errors="coerce").to_numpy(float)
    numeric = np.isfinite(left) & np.isfinite(right)
    text_equal = a.astype(str).to_numpy() == b.astype(str).to_numpy()
    return np.where(numeric, left == right, text_equal)


def _from_errors(view, window, segment, settings, rows: int, progress) -> AttributedSample:
    roles = view.roles
    features = tuple(roles.features)
    labeled = sql.render(_NOT_NULL, column=Ident(roles.target))
    strata = _strata(view, window, segment, extra=[labeled])
    needed = [c for c in (roles.prediction, roles.score, roles.target) if c]
    _report(progress, 0.05, "sampling labeled rows")
    frame = sample_rows(view, strata, list(features) + needed, rows, settings.seed)
    empty = AttributedSample("errors", features, frame, np.zeros((len(frame), len(features))),
                             method=ERROR_METHOD)
    if len(frame) < MIN_FIT_ROWS:
        return replace(empty, reason=f"only {len(frame)} labeled rows in the window (an error "
                                     f"model needs at least {MIN_FIT_ROWS})")
    errors, classify = row_errors(view, frame)
    keep = np.isfinite(errors)
    frame, errors = frame.loc[keep].reset_index(drop=True), errors[keep]
    empty = replace(empty, rows=frame, values=np.zeros((len(frame), len(features))))
    if classify and (errors.sum() < 5 or (1 - errors).sum() < 5):
        return replace(empty, reason=f"{int(errors.sum())} of {len(errors)} labeled rows are "
                                     "errors: too few of one kind to learn what drives them")
    matrix, groups = _design(frame, features, _kinds(view))
    values, base, output, quality = _fit_and_explain(matrix, groups, len(features), errors,
                                                     classify, settings.seed, progress, "error model")
    control = _confidence_baseline(view, frame, errors, classify, quality, output, settings.seed,
                                   progress)
    space = "log-odds of an error" if classify else "absolute error"
    return AttributedSample("errors", features, frame, values, base, output, output_space=space,
                            method=ERROR_METHOD, computed_rows=len(frame), quality=quality,
                            learned=errors, control=control)


def _confidence_baseline(view, frame: pd.DataFrame, errors: np.ndarray, classify: bool,
                         quality: ModelQuality, output: np.ndarray, seed: int,
                         progress: Progress | None) -> ConfidenceBaseline | None:
    """The same out-of-fold error model on the logged score alone, against the features' model.

    The score is not given to the features' error model: it is a function of the features, so
    it would take the credit for every group where the model is unsure of itself (such as a
    segment whose risk hangs on something the log does not hold), which is where errors
    concentrate. Beside the ranking it says whether the errors sit where the model is unsure.
    """
    column = view.roles.score
    if not column or not classify or column not in frame:
        return None
    score = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, copy=True)
    score[~np.isfinite(score)] = np.nan
    scored = int(np.isfinite(score).sum())
    if scored < MIN_FIT_ROWS:
        missing = ModelQuality("auc", None, len(errors), int(errors.sum()), CV_FOLDS, "none",
                               reason=f"only {scored} of the rows have a {column}")
        return ConfidenceBaseline(column, missing, quality.value)
    _report(progress, 0.95, f"fitting the error model on {column} alone")
    _, _, score_output, score_quality = _fit_and_explain(
        score[:, None], np.zeros(1, dtype=int), 1, errors, True, seed, None,
        "score-only error model", explain=False)
    difference, low, high = paired_auc_difference(errors, output, score_output)
    return ConfidenceBaseline(column, score_quality, quality.value, difference, low, high)


def paired_auc_difference(target: np.ndarray, first: np.ndarray, second: np.ndarray
                          ) -> tuple[float | None, float | None, float | None]:
    """AUC(first) − AUC(second) on the same rows, with DeLong's 95% CI for correlated AUCs.

    DeLong, DeLong & Clarke-Pearson (1988): each AUC is a Mann–Whitney statistic; its
    per-row placement values give the covariance of the two AUCs, hence the variance of their
    difference (normal approximation). None where one class is missing.
    """
    from scipy import stats

    target = np.asarray(target, dtype=float)
    positive = target == 1
    count_pos, count_neg = int(positive.sum()), int((~positive).sum())
    if count_pos == 0 or count_neg == 0:
        return None, None, None
    aucs, placements_pos, placements_neg = [], [], []
    for scores in (np.asarray(first, dtype=float), np.asarray(second, dtype=float)):
        overall = stats.rankdata(scores)
        within_pos = stats.rankdata(scores[positive])
        within_neg = stats.rankdata(scores[~positive])
        # a positive's share of negatives scored below it; a negative's of positives above it
        placements_pos.append((overall[positive] - within_pos) / count_neg)
        placements_neg.append(1.0 - (overall[~positive] - within_neg) / count_pos)
        aucs.append(float(placements_pos[-1].mean()))
    difference = aucs[0] - aucs[1]
    if count_pos < 2 or count_neg < 2:
        return difference, None, None
    covariance = np.cov(placements_pos) / count_pos + np.cov(placements_neg) / count_neg
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    if not np.isfinite(variance) or variance < 0:
        return difference, None, None
    half = float(stats.norm.ppf(0.5 + CONFIDENCE / 2) * np.sqrt(variance))
    return difference, difference - half, difference + half


def _from_drift(view, window, reference, segment, settings, rows: int, progress) -> AttributedSample:
    features = tuple(view.roles.features)
    strata = _strata(view, window, segment, reference=reference)
    _report(progress, 0.05, "sampling reference and current rows")
    frame = sample_rows(view, strata, list(features), rows, settings.seed)
    current = frame.index[frame[STRATUM] == CURRENT]
    past = frame.index[frame[STRATUM] == REFERENCE]
    size = min(len(current), len(past))
    method = "domain classifier (gradient boosting: reference vs current rows)"
    if size < MIN_FIT_ROWS:
        return AttributedSample("drift", features, frame, np.zeros((len(frame), len(features))),
                                method=method,
                                reason=f"{len(current)} current and {len(past)} reference rows: a "
                                       f"domain classifier needs at least {MIN_FIT_ROWS} on each side")
    balanced = frame.loc[current[:size].append(past[:size])].reset_index(drop=True)
    label = (balanced[STRATUM] == CURRENT).to_numpy(dtype=float)
    matrix, groups = _design(balanced, features, _kinds(view))
    values, base, output, quality = _fit_and_explain(matrix, groups, len(features), label, True,
                                                     settings.seed, progress, "domain classifier")
    return AttributedSample("drift", features, balanced, values, base, output,
                            output_space="log-odds of being a current row", method=method,
                            computed_rows=len(balanced), quality=quality)


# ---------------------------------------------------------------- the views

# The last few fitted error models / domain classifiers, so that importance, dependence and a
# second look at the same window do not fit again. Keyed by the data files and their times.
_FITTED: dict[tuple, AttributedSample] = {}
MAX_FITTED = 8


def _remember(key: tuple, fitted: AttributedSample) -> None:
    if len(_FITTED) >= MAX_FITTED:
        _FITTED.pop(next(iter(_FITTED)))
    _FITTED[key] = fitted


def _data_identity(view) -> tuple:
    """The log's files with their sizes and modification times (changes when data arrives)."""
    return view.data_identity()


def attributions_sample(view, window: Window | None, segment: Segment = (), *,
                        source: str | None = "auto", reference: Window | None = None,
                        versus_rest: bool = False, sample: int | None = None,
                        within: Segment = (),
                        progress: Progress | None = None) -> AttributedSample:
    """Sampled rows with their attributions (the data behind every view, e.g. a beeswarm).

    ``reference`` adds a stratum of the reference window's rows (``versus_rest``: of the window's
    rows outside the segment). ``within`` narrows both sides (e.g. to the sidebar's model). For
    ``errors`` and ``drift`` the values are those of the fitted error model / domain classifier;
    ``drift`` needs ``reference`` (default: the log's reference window).
    """
    source = resolve_source(view, source)
    settings = settings_of(view)
    if sample is not None and sample < 1:
        raise FilterError(f"--sample {sample}: must be at least 1")
    if source in ("errors", "drift"):   # one population: within only narrows it
        segment = tuple(within or ()) + tuple(segment)
        if source == "drift" and reference is None:
            from mlmon_core.windows import reference_window

            reference = reference_window(view)
        rows = sample or settings.fit_rows(source)
        key = (_data_identity(view), source, window, tuple(segment), reference, rows, settings)
        fitted = _FITTED.get(key)
        if fitted is None:
            fitted = _from_errors(view, window, segment, settings, rows, progress) \
                if source == "errors" else \
                _from_drift(view, window, reference, segment, settings, rows, progress)
            _remember(key, fitted)
        return fitted
    strata = _strata(view, window, segment, reference, versus_rest, within=within)
    rows = sample or settings.sample
    if source == "logged":
        return _logged(view, strata, None, settings, rows)
    return _from_model(view, strata, settings, rows, progress)


def importance(view, window: Window | None, segment: Segment = (), *,
               source: str | None = "auto", compare_to: Window | None = None,
               sample: int | None = None, seed: int = 0, within: Segment = (),
               progress: Progress | None = None) -> Importance:
    """Global importance (mean |SHAP|) per feature in a window and segment, with bootstrap CIs.

    With ``compare_to`` (a reference window) it is the *attribution drift*: importance in both
    windows, their difference with a CI, ranked by the size of the change. For ``errors`` the
    importances are those of the error model; for ``drift`` of the domain classifier between
    ``compare_to`` (default: the reference window) and ``window``. ``within`` narrows every
    side (the result's segment is ``within`` plus ``segment``).
    """
    resolved = resolve_source(view, source)
    reference = compare_to if resolved != "errors" else None
    if resolved == "drift" and reference is None:
        from mlmon_core.windows import reference_window

        reference = reference_window(view)
    attributed = attributions_sample(view, window, segment, source=resolved, reference=reference,
                                     sample=sample, within=within, progress=progress)
    segment = tuple(within or ()) + tuple(segment)
    notes = list(attributed.notes)
    if resolved == "errors" and compare_to is not None:
        notes.append("the error explanation uses the window's labeled rows only; compare_to is "
                     "ignored")
    _report(progress, 0.97, "bootstrapping confidence intervals")
    compared = resolved in ("logged", "model") and reference is not None
    result = _summarise(attributed, window, segment, reference, compared, seed, notes)
    _report(progress, 1.0, "done")
    return result


def attribution_drift(view, window: Window | None, reference: Window | None = None,
                      segment: Segment = (), *, source: str | None = "auto",
                      sample: int | None = None, progress: Progress | None = None) -> Importance:
    """Importance in ``window`` against ``reference`` (default: the log's reference window)."""
    if reference is None:
        from mlmon_core.windows import reference_window

        reference = reference_window(view)
    return importance(view, window, segment, source=source, compare_to=reference, sample=sample,
                      progress=progress)


def segment_importance(view, window: Window | None, segment: Segment, *,
                       source: str | None = "auto", sample: int | None = None,
                       within: Segment = (), progress: Progress | None = None) -> Importance:
    """Importance inside a segment against the rest of the window (the reference columns).

    ``within`` narrows both sides first (e.g. the model the sidebar picked): the rest is then the
    window's ``within`` rows outside ``segment``.
    """
    resolved = resolve_source(view, source)
    if resolved not in ("logged", "model"):
        raise FilterError("segment vs rest compares logged or model attributions; for errors or "
                          "drift, pass the segment to importance()")
    if not segment:
        raise FilterError("segment vs rest needs a segment (--where)")
    within = tuple(within or ())
    attributed = attributions_sample(view, window, segment, source=resolved, versus_rest=True,
                                     sample=sample, within=within, progress=progress)
    result = _summarise(attributed, window, within + tuple(segment), None, True, 0,
                        list(attributed.notes))
    rest = "rest of the window (rows outside the segment)"
    if within:
        rest = f"rest of {sql.describe_segment(within)} in the window (rows outside the segment)"
    return replace(result, reference_label=rest)


def error_explanation(view, window: Window | None, segment: Segment = (), *,
                      sample: int | None = None, progress: Progress | None = None) -> Importance:
    """The features that drive errors: SHAP importances of an error model, with its AUC (or R²)."""
    return importance(view, window, segment, source="errors", sample=sample, progress=progress)


def drift_explanation(view, window: Window | None, reference: Window | None = None,
                      segment: Segment = (), *, sample: int | None = None,
                      progress: Progress | None = None) -> Importance:
    """The features that moved most: a domain classifier's AUC (drift score) and importances."""
    if reference is None:
        from mlmon_core.windows import reference_window

        reference = reference_window(view)
    return importance(view, window, segment, source="drift", compare_to=reference, sample=sample,
                      progress=progress)


def _summarise(attributed: AttributedSample, window, segment, reference, compared: bool,
               seed: int, notes: list[str]) -> Importance:
    rng = np.random.default_rng(seed)
    if attributed.source == "errors":
        return _summarise_errors(attributed, window, segment, rng, notes)
    magnitude = np.abs(attributed.values)
    current_rows, reference_rows = attributed.stratum(CURRENT), attributed.stratum(REFERENCE)
    if compared:
        table = importance_table(attributed.features, magnitude[current_rows],
                                 magnitude[reference_rows], rng)
    else:   # errors: the window's rows; drift: the classifier's rows from both windows
        table = importance_table(attributed.features, magnitude, None, rng)
    if attributed.source == "drift" and attributed.reason is not None:
        # No classifier was fitted: its placeholder zeros are not an importance of 0.
        table = _empty_focus_table(attributed.features)[list(table.columns)]
    reason = attributed.reason
    if reason is None and len(current_rows) == 0:
        reason = "no rows in the window and segment"
    label = None
    if compared and reference is not None:
        label = f"reference window {reference}"
    elif attributed.source == "drift":
        label = f"domain classifier: reference window {reference} vs the window"
    return Importance(
        source=attributed.source, window=window or Window(None, None), segment=tuple(segment),
        features=table, sample_rows=int(len(current_rows)), reference=reference,
        reference_label=label,
        reference_rows=int(len(reference_rows)) if reference is not None or compared else None,
        model_quality=attributed.quality, output_space=attributed.output_space,
        method=attributed.method, computed_rows=attributed.computed_rows,
        cached_rows=attributed.cached_rows, reason=reason, notes=tuple(notes), compared=compared)


def _summarise_errors(attributed: AttributedSample, window, segment, rng: np.random.Generator,
                      notes: list[str]) -> Importance:
    """The error explanation: features ranked by their share of the most error-prone rows' extra
    error (``error_focus_table``), with the model-confidence baseline beside it."""
    rows = len(attributed.rows)
    fitted = attributed.reason is None and attributed.output is not None and \
        attributed.learned is not None and rows > 0
    focus, ranking = None, None
    if fitted:
        table, focus = error_focus_table(attributed.features, attributed.values,
                                         attributed.output, attributed.learned,
                                         attributed.output_space == "log-odds of an error", rng)
        ranking = _ranking_text(focus)
    else:
        table = _empty_focus_table(attributed.features)
    reason = attributed.reason or (None if rows else "no rows in the window and segment")
    return Importance(
        source="errors", window=window or Window(None, None), segment=tuple(segment),
        features=table, sample_rows=rows, model_quality=attributed.quality,
        output_space=attributed.output_space, method=attributed.method,
        computed_rows=attributed.computed_rows, reason=reason, notes=tuple(notes),
        ranking=ranking, focus=focus, control=attributed.control)


def _ranking_text(focus: ErrorFocus) -> str:
    unit = "in error rate: 0.05 is 5 points" if focus.classify else \
        "in units of the absolute error"
    share = focus.rows / focus.total_rows if focus.total_rows else FOCUS_SHARE
    return (f"Features are ranked by their share of the extra error of the {share:.0%} of rows "
            "the error model rates most error-prone: a feature's share is its mean SHAP value "
            "over those rows minus over all rows, scaled so that the shares add up to those "
            f"rows' observed extra error ({unit}). A feature that raises the error of a small "
            "group of rows a lot ranks high even if it does nothing elsewhere; mean_abs is the "
            "error model's mean |SHAP| over all rows.")


_TABLE_COLUMNS = ("mean_abs", "ci_low", "ci_high", "reference_mean_abs", "reference_ci_low",
                  "reference_ci_high", "difference", "difference_ci_low", "difference_ci_high")
_FOCUS_EXTRA = ("error_share", "error_share_ci_low", "error_share_ci_high", "focus_shap")


def _empty_focus_table(features: Sequence[str]) -> pd.DataFrame:
    table = pd.DataFrame({"feature": list(features)})
    for column in _TABLE_COLUMNS + _FOCUS_EXTRA:
        table[column] = np.nan
    return table


def error_focus_table(features: Sequence[str], values: np.ndarray, output: np.ndarray,
                      errors: np.ndarray, classify: bool, rng: np.random.Generator,
                      share: float = FOCUS_SHARE, resamples: int = BOOTSTRAP_RESAMPLES
                      ) -> tuple[pd.DataFrame, ErrorFocus]:
    """Each feature's share of the extra error of the most error-prone rows, with bootstrap CIs.

    The focus rows are the ``share`` of rows with the highest out-of-fold predicted error
    (``output``). A feature's SHAP gap is its mean SHAP value over the focus rows minus over all
    rows; the gaps add up to how much higher the error model puts the focus rows, so each gap's
    part of that sum, times the focus rows' observed extra error, is the feature's share of the
    extra error (``error_share``; the features' shares add up to it). Unlike the mean |SHAP|
    over all rows (``mean_abs``, kept beside it with its own CI), a feature that matters a lot
    for a few rows is not drowned. CIs: percentile bootstrap over the rows, the focus rows held
    fixed.
    """
    values = np.nan_to_num(np.asarray(values, dtype=float))
    errors = np.asarray(errors, dtype=float)
    rows = len(output)
    if rows == 0:
        return _empty_focus_table(features), ErrorFocus(0, 0, np.nan, np.nan, classify)
    count = max(1, int(np.ceil(share * rows)))
    focus = np.zeros(rows, dtype=bool)
    focus[np.argsort(-np.asarray(output, dtype=float), kind="stable")[:count]] = True
    full = np.ones((1, rows))
    estimate = _focus_shares(values, errors, focus, full)[0]
    boot = np.empty((resamples, len(features)))
    chunk = max(1, min(resamples, 4_000_000 // max(rows, 1)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        weights = rng.multinomial(rows, np.full(rows, 1.0 / rows), size=size).astype(float)
        boot[start:start + size] = _focus_shares(values, errors, focus, weights)
    low, high = _percentiles(boot, (1 - CONFIDENCE) / 2)
    table = importance_table(features, np.abs(values), None, rng).set_index("feature")
    table = table.reindex(list(features))
    table["error_share"], table["error_share_ci_low"], table["error_share_ci_high"] = \
        estimate, low, high
    table["focus_shap"] = values[focus].mean(axis=0) - values.mean(axis=0)
    table = table.reset_index().sort_values("error_share", ascending=False, na_position="last",
                                            kind="stable")
    summary = ErrorFocus(count, rows, float(errors[focus].mean()), float(errors.mean()), classify)
    return table.reset_index(drop=True), summary


def _focus_shares(values: np.ndarray, errors: np.ndarray, focus: np.ndarray,
                  weights: np.ndarray) -> np.ndarray:
    """Per weighting (row of ``weights``): each feature's share of the focus rows' extra error."""
    with np.errstate(invalid="ignore", divide="ignore"):
        in_focus, everywhere = weights[:, focus], weights
        focus_total, total = in_focus.sum(axis=1), everywhere.sum(axis=1)
        gaps = (in_focus @ values[focus]) / focus_total[:, None] - \
            (everywhere @ values) / total[:, None]
        extra = (in_focus @ errors[focus]) / focus_total - (everywhere @ errors) / total
        spread = gaps.sum(axis=1)      # > 0 unless the error model predicts one value for all
        shares = gaps / np.where(spread > 1e-12, spread, np.nan)[:, None]
        return shares * extra[:, None]


def importance_table(features: Sequence[str], current: np.ndarray, reference: np.ndarray | None,
                     rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """Mean per feature of |SHAP| matrices, percentile bootstrap CIs, and the difference's CI."""
    alpha = (1 - CONFIDENCE) / 2
    current_boot = bootstrap_means(current, resamples, rng)
    table = pd.DataFrame({"feature": list(features), "mean_abs": _nanmean(current)})
    table["ci_low"], table["ci_high"] = _percentiles(current_boot, alpha)
    if reference is None:
        for column in ("reference_mean_abs", "reference_ci_low", "reference_ci_high",
                       "difference", "difference_ci_low", "difference_ci_high"):
            table[column] = np.nan
        return table.sort_values("mean_abs", ascending=False, na_position="last",
                                 kind="stable").reset_index(drop=True)
    reference_boot = bootstrap_means(reference, resamples, rng)
    table["reference_mean_abs"] = _nanmean(reference)
    table["reference_ci_low"], table["reference_ci_high"] = _percentiles(reference_boot, alpha)
    table["difference"] = table["mean_abs"] - table["reference_mean_abs"]
    table["difference_ci_low"], table["difference_ci_high"] = _percentiles(
        current_boot - reference_boot, alpha)
    order = table["difference"].abs().sort_values(ascending=False, na_position="last",
                                                  kind="stable").index
    return table.loc[order].reset_index(drop=True)


def bootstrap_means(matrix: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Column means of ``resamples`` bootstrap resamples of the rows (NaN ignored): (B, columns).

    Vectorised with multinomial resampling counts, in chunks so memory stays small.
    """
    rows, width = matrix.shape
    if rows == 0:
        return np.full((resamples, width), np.nan)
    present = np.isfinite(matrix)
    filled = np.where(present, matrix, 0.0)
    out = np.empty((resamples, width))
    chunk = max(1, min(resamples, 4_000_000 // max(rows, 1)))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        weights = rng.multinomial(rows, np.full(rows, 1.0 / rows), size=count).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + count] = (weights @ filled) / (weights @ present)
    return out


def _nanmean(matrix: np.ndarray) -> np.ndarray:
    if matrix.shape[0] == 0:
        return np.full(matrix.shape[1], np.nan)
    present = np.isfinite(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present, matrix, 0.0).sum(axis=0) / present.sum(axis=0)


def _percentiles(boot: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    if boot.size == 0 or np.all(np.isnan(boot)):
        nan = np.full(boot.shape[1], np.nan)
        return nan, nan
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(boot, alpha, axis=0), np.nanquantile(boot, 1 - alpha, axis=0)


# ---------------------------------------------------------------- one row

def explain_row(view, row_id: Any, *, source: str | None = "auto",
                progress: Progress | None = None) -> RowExplanation:
    """One prediction's attributions (waterfall data), with the row's feature values."""
    roles = view.roles
    if not roles.id:
        raise ConfigError("explaining one row needs an id column: set [columns] id in mlmon.toml")
    resolved = resolve_source(view, source)
    if resolved not in ("logged", "model"):
        raise FilterError(f"a single row is explained from logged or model attributions, not "
                          f"{resolved}")
    settings = settings_of(view)
    condition = sql.compile_condition(sql.Condition(roles.id, "==", value=row_id), view.column_types)
    if resolved == "logged":
        mapping = roles.attributions
        features = tuple(f for f in roles.features if f in mapping)
        base_column = _base_value_column(view, settings)
        columns = list(features) + [mapping[f] for f in features] + \
            [c for c in (base_column, roles.score) if c]
    else:
        context = _model_context(view, settings)
        features = context.explainer.features
        columns = list(features) + ([roles.score] if roles.score else [])
    frame = _fetch_row(view, condition, row_id, columns)
    logged_score = _float(frame[roles.score].iloc[0]) if roles.score else None
    if resolved == "logged":
        values = frame[[mapping[f] for f in features]].apply(pd.to_numeric, errors="coerce") \
            .to_numpy(dtype=float)[0]
        base = _float(frame[base_column].iloc[0]) if base_column else None
        prediction = base + float(np.nansum(values)) if base is not None else logged_score
        table = _waterfall(features, frame, values)
        return RowExplanation(frame[roles.id].iloc[0], "logged", base, prediction,
                              "as logged", table, logged_score, "logged by the serving system")
    values, base, output, _, notes = _explain_frame(view, context, frame, progress)
    table = _waterfall(features, frame, values[0])
    return RowExplanation(frame[roles.id].iloc[0], "model", _float(base[0]), _float(output[0]),
                          _output_space(context), table, logged_score, _method(context),
                          context.notes + notes)


def _fetch_row(view, condition: Fragment, row_id: Any, columns: Sequence[str]) -> pd.DataFrame:
    wanted = list(dict.fromkeys([view.roles.id, *columns]))
    frame = view.fetch_df(sql.render(_ROW_BY_ID, columns=sql.identifiers(wanted),
                                     log=view.relation, condition=condition))
    if frame.empty:
        raise FilterError(f"no row with {view.roles.id} = {row_id!r} in the log")
    if len(frame) > 1:
        raise FilterError(f"{view.roles.id} = {row_id!r} names more than one row; ids must be unique")
    frame.insert(0, STRATUM, CURRENT)
    return frame


def _waterfall(features: Sequence[str], frame: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame({"feature": list(features),
                          "value": [_plain(frame[f].iloc[0]) for f in features],
                          "shap": np.asarray(values, dtype=float)})
    order = table["shap"].abs().sort_values(ascending=False, kind="stable").index
    return table.loc[order].reset_index(drop=True)


# ---------------------------------------------------------------- dependence

def dependence(view, window: Window | None, feature: str, *, color_by: str | None = "auto",
               segment: Segment = (), source: str | None = "auto", sample: int | None = None,
               progress: Progress | None = None) -> Dependence:
    """A feature's attribution against its value, coloured by a second feature.

    ``color_by="auto"`` picks the feature whose values best explain the spread of this feature's
    attribution at equal values (SHAP's approximate interaction ranking).
    """
    if feature not in view.columns:
        raise FilterError(f"unknown feature {feature!r}")
    attributed = attributions_sample(view, window, segment, source=source, sample=sample,
                                     progress=progress)
    if feature not in attributed.features:
        raise FilterError(f"feature {feature!r} has no attributions from {attributed.source} "
                          f"(it has: {', '.join(attributed.features)})")
    if color_by not in (None, "auto") and color_by not in attributed.features:
        raise FilterError(f"color_by {color_by!r} is not one of the explained features")
    index = attributed.features.index(feature)
    rows = attributed.rows
    if color_by == "auto":
        color_by = _strongest_interaction(attributed, index)
    id_values = rows[view.roles.id] if view.roles.id and view.roles.id in rows else \
        pd.Series(np.arange(len(rows)))
    points = pd.DataFrame({"id": id_values.to_numpy(), "value": rows[feature].to_numpy(),
                           "shap": attributed.values[:, index],
                           "color_value": rows[color_by].to_numpy() if color_by else None})
    return Dependence(feature, color_by, view.columns[feature].kind, points, attributed.source,
                      len(rows), attributed.output_space, attributed.reason)


def _strongest_interaction(attributed: AttributedSample, index: int) -> str | None:
    import shap

    if len(attributed.features) < 2 or len(attributed.rows) < 10:
        return None
    codes = attributed.rows[list(attributed.features)].apply(_as_codes)
    values = np.nan_to_num(attributed.values)
    try:
        ranked = shap.utils.approximate_interactions(index, values, codes.to_numpy(dtype=float))
    except Exception:  # noqa: BLE001 - no ranking is no colour, not a failure
        return None
    others = [int(i) for i in ranked if int(i) != index]
    return attributed.features[others[0]] if others else None


def _as_codes(series: pd.Series) -> pd.Series:
    if _numeric_like(series):
        return pd.to_numeric(series.astype(object), errors="coerce").astype(float)
    codes = pd.Series(pd.Categorical(series.astype(object)).codes, index=series.index).astype(float)
    return codes.where(codes >= 0)


# ---------------------------------------------------------------- small helpers

def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(max(fraction, 0.0), 1.0), message)


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _float(value: Any) -> float | None:
    value = _plain(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _number(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value
