"""Pick rows for labeling: which unlabeled rows to send to the labeling team next, and why.

The pool is the window's (and segment's) rows without a target that were never exported before.
A queue of ``n`` rows is filled by one or more strategies, each with a budget, in the order given;
a row chosen by an earlier strategy is never chosen again by a later one, and every chosen row
carries the reason it was chosen.

Strategies
----------
- ``uncertainty``: the rows whose score is closest to the decision threshold (``[model]
  threshold``): ``ORDER BY abs(score - threshold), id``, so ties go to the smaller id. Binary
  classifiers only: the margin between the two most likely classes of a multiclass model needs one
  score column per class, which the log does not have, and a regression has no threshold; the
  strategy then picks nothing and says why.
- ``segment``: rows inside the weak slices ``slices.find_slices`` reports for the window (or the
  degraded ones, ``find_degraded_slices`` against the reference window), spread evenly over the
  top slices (round-robin, a row in several slices counts for the best-ranked one).
- ``drift``: rows a domain classifier finds most unlike the reference window. A gradient-boosted
  classifier learns reference rows against the window's rows on bounded samples, cross-fitted on
  two halves split by a hash of the id, so every candidate is scored by the half-model that never
  saw it; the highest probabilities of "current, not reference" win. Its held-out ROC AUC is the
  strategy's note (0.5: nothing to find).
- ``diverse``: a stratified sample covering the feature space. The few features that explain most
  of the score's variance (correlation ratio η² of the score on the binned feature, from a
  sample) are cut into bins (numerical: quartiles of the reference window; categorical: the most
  frequent values plus "other"; missing is a bin of its own), and the strata (bin combinations)
  are visited round-robin, largest first, taking one row of each before a second of any.
- ``random``: the baseline: ``ORDER BY hash(id, seed), id`` (deterministic per seed).

Everything that selects rows is one DuckDB query per strategy; only the chosen rows (at most
``n``), bounded samples for the domain classifier and aggregates come to pandas.

Exports and the ledger
----------------------
``export_queue`` writes the rows (id, time, features, prediction, score, strategy, reason) as CSV
or Parquet by the file's extension, atomically (a temporary file renamed into place), and records
the export in an append-only ledger beside the config, ``.mlmon/label_exports/``: one Parquet part
per export (export id, time, row id, strategy, reason, file), written under a temporary name and
renamed. Later queues exclude every id in the ledger (an anti-join in DuckDB), so exported rows
are never proposed again; labels returned with ``mlmon ingest-labels`` join the log by id and flow
into every metric.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mlmon_core import sql
from mlmon_core.config import Window
from mlmon_core.errors import MlmonError
from mlmon_core.sql import Fragment, Ident, Segment

Progress = Callable[[float, str], None]

STRATEGIES = ("uncertainty", "segment", "drift", "diverse", "random")
SLICE_MODES = ("weak", "degraded")
MAX_QUEUE_ROWS = 100_000
DEFAULT_SEED = 0
LEDGER_FOLDER = Path(".mlmon") / "label_exports"
EXPORT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SEGMENT_SLICES = 5            # top slices the segment strategy spreads its rows over
DIVERSE_FEATURES = 3          # features the diverse strategy stratifies over
DIVERSE_BINS = 4              # quantile bins per numerical feature (quartiles)
DIVERSE_CATEGORIES = 5        # most frequent values kept per categorical feature (+ "other")
PROFILE_SAMPLE_ROWS = 20_000   # rows sampled to place the bins and rank the features
DRIFT_FIT_ROWS = 5_000        # rows per side (reference, current) the domain classifier learns from
DRIFT_POOL_ROWS = 20_000      # candidates the domain classifier scores
DRIFT_MIN_ROWS = 50           # fewer rows on a side and no classifier is fitted
DRIFT_CATEGORIES = 30         # categories the domain classifier tells apart per feature
MAX_MEMO = 8
_FEATURE_KINDS = ("numerical", "categorical", "boolean")

# ---------------------------------------------------------------- SQL

_COUNTS = ("SELECT count(*), count(*) FILTER (WHERE {unlabeled}), "
           "count(*) FILTER (WHERE {unlabeled} AND ({not_exported})) FROM {log} WHERE {where}")
_NOT_EXPORTED = ("{id} NOT IN (SELECT __id FROM (SELECT TRY_CAST(id AS {type}) AS __id "
                 "FROM read_parquet({parts}, union_by_name = true)) WHERE __id IS NOT NULL)")
_NOT_EXPORTED_TEXT = ("CAST({id} AS VARCHAR) NOT IN (SELECT id FROM read_parquet({parts}, "
                      "union_by_name = true) WHERE id IS NOT NULL)")
_NOT_CHOSEN = "{id} NOT IN (SELECT unnest({ids}))"
_CHOSEN = "{id} IN (SELECT unnest({ids}))"
_IS_NULL = "{c} IS NULL"
_FINITE = "isfinite(CAST({c} AS DOUBLE))"
_UNCERTAINTY = ("SELECT {columns}, CAST({score} AS DOUBLE) AS __score, "
                "abs(CAST({score} AS DOUBLE) - {threshold}) AS __distance FROM {log} "
                "WHERE {where} ORDER BY __distance, {id} LIMIT {n}")
_RANDOM = "SELECT {columns} FROM {log} WHERE {where} ORDER BY hash({id}, {seed}), {id} LIMIT {n}"
# Round-robin over groups (slices, strata): every group's first row, then every group's second...
_ROUND_ROBIN = (
    "WITH pool AS (SELECT {id} AS __id, {group} AS __group FROM {log} WHERE {where}), "
    "ranked AS (SELECT __id, __group, row_number() OVER (PARTITION BY __group "
    "ORDER BY hash(__id, {seed}), __id) AS __rank, count(*) OVER (PARTITION BY __group) AS __size "
    "FROM pool WHERE __group IS NOT NULL) "
    "SELECT __id, __group FROM ranked ORDER BY __rank, {order}, __id LIMIT {n}")
_BY_SIZE = Fragment("__size DESC, __group")
_BY_GROUP = Fragment("__group")
_CASE = "CASE {whens} END"
_WHEN = "WHEN {condition} THEN {value}"
_SAMPLE_BY_HASH = ("SELECT {columns} FROM {log} WHERE {where} "
                   "ORDER BY hash({id}, {seed}), {id} LIMIT {n}")
_FIT_SAMPLE = ("SELECT * FROM ({current}) UNION ALL SELECT * FROM ({reference})")
_SIDE = ("SELECT {side} AS __side, hash({id}, {fold_seed}) % 2 AS __fold, {columns} FROM {log} "
         "WHERE {where} ORDER BY hash({id}, {seed}), {id} LIMIT {n}")
_POOL_FOLDS = ("SELECT hash({id}, {fold_seed}) % 2 AS __fold, {columns} FROM {log} WHERE {where} "
               "ORDER BY hash({id}, {seed}), {id} LIMIT {n}")
# Samples are the first rows by a hash of the id: the same rows every time, whatever the threads.
_EDGES = ("SELECT {quantiles} FROM (SELECT {columns} FROM {log} WHERE {where} "
          "ORDER BY hash({id}, {seed}), {id} LIMIT {n}) AS s")
_QUANTILES = "quantile_disc({c}, [{positions}]), min({c})"
_PROFILE = ("SELECT {columns}, {groupings}, count(*), count(__out), sum(__out), "
            "sum(__out * __out) FROM (SELECT {raw}, {output} AS __out FROM {log} WHERE {where} "
            "ORDER BY hash({id}, {seed}), {id} LIMIT {n}) AS s "
            "GROUP BY GROUPING SETS ({sets}, ())")
_DETAILS = "SELECT {columns} FROM {log} WHERE {where}"
_LEDGER_HISTORY = (
    "SELECT export_id, min(exported_at) AS exported_at, any_value(file) AS file, "
    "sum(n) AS rows, string_agg(strategy || ' ' || n, ', ' ORDER BY n DESC, strategy) AS strategies "
    "FROM (SELECT export_id, min(exported_at) AS exported_at, any_value(file) AS file, strategy, "
    "count(*) AS n FROM read_parquet({parts}, union_by_name = true) "
    "GROUP BY export_id, strategy) AS s GROUP BY export_id ORDER BY exported_at DESC LIMIT {n}")
_LEDGER_TOTAL = "SELECT count(*), count(DISTINCT export_id) FROM read_parquet({parts}, union_by_name = true)"
_DESCRIBE = "DESCRIBE {v}"


# ================================================================= results

@dataclass(frozen=True)
class StrategyOutcome:
    """One strategy's share of a queue: its budget, what it chose, and why it chose fewer."""

    name: str
    requested: int
    chosen: int
    reason: str | None = None      # why fewer rows than requested (or none) were chosen
    note: str | None = None        # what the strategy rested on (slices, classifier AUC, features)

    def to_json(self) -> dict[str, Any]:
        """``{requested, chosen, reason?, note?}``."""
        out: dict[str, Any] = {"requested": self.requested, "chosen": self.chosen}
        if self.reason:
            out["reason"] = self.reason
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True, eq=False)
class LabelQueue:
    """Rows proposed for labeling, each with its strategy and reason, and what was done with them."""

    window: Window
    segment: Segment
    requested: int
    rows: pd.DataFrame             # id, strategy, reason, score, prediction, time, features
    strategies: tuple[StrategyOutcome, ...]
    id_column: str | None
    window_rows: int = 0           # rows in the window and segment
    unlabeled_rows: int = 0        # of which without a target
    pool: int = 0                  # of which never exported before: what the strategies pick from
    seed: int = DEFAULT_SEED
    reason: str | None = None
    out: str | None = None
    recorded: bool = False
    export_id: str | None = None
    strategy_column: str = "strategy"
    reason_column: str = "reason"
    score_column: str | None = None
    prediction_column: str | None = None

    @property
    def chosen(self) -> int:
        """Rows in the queue."""
        return len(self.rows)

    @property
    def already_exported(self) -> int:
        """Unlabeled rows of the window left out because an earlier export holds them."""
        return self.unlabeled_rows - self.pool

    def to_json(self) -> dict[str, Any]:
        """The ``mlmon label-queue --json`` object."""
        rows = []
        for record in self.rows.to_dict("records"):
            rows.append({
                "id": _plain(record.get(self.id_column)) if self.id_column else None,
                "strategy": record[self.strategy_column], "reason": record[self.reason_column],
                "score": _plain(record.get(self.score_column)) if self.score_column else None,
                "prediction": (_plain(record.get(self.prediction_column))
                               if self.prediction_column else None),
            })
        return {
            "window": self.window.to_json(), "segment": sql.segment_to_json(self.segment),
            "requested": self.requested, "chosen": self.chosen,
            "window_rows": self.window_rows, "unlabeled_rows": self.unlabeled_rows,
            "already_exported": self.already_exported, "pool": self.pool, "seed": self.seed,
            "strategies": {s.name: s.to_json() for s in self.strategies},
            "rows": rows, "out": self.out, "recorded": self.recorded,
            "export_id": self.export_id, "reason": self.reason,
        }

    def to_text(self, shown: int = 10) -> str:
        """A few plain lines for the terminal."""
        lines = [f"label queue: {self.chosen:,} of {self.requested:,} rows requested, from "
                 f"{self.pool:,} unlabeled rows not yet exported in {self.window} "
                 f"({sql.describe_segment(self.segment)}; {self.already_exported:,} already "
                 f"exported, {self.window_rows - self.unlabeled_rows:,} labeled)"]
        if self.reason:
            lines.append(self.reason)
        for outcome in self.strategies:
            line = f"  {outcome.name:<12} {outcome.chosen:>6,} of {outcome.requested:,}"
            if outcome.reason:
                line += f"  — {outcome.reason}"
            lines.append(line)
            if outcome.note:
                lines.append(f"  {'':<12} {outcome.note}")
        for record in self.rows.head(shown).to_dict("records"):
            row_id = record.get(self.id_column) if self.id_column else "?"
            lines.append(f"  {str(row_id):<16} {record[self.reason_column]}")
        if self.chosen > shown:
            lines.append(f"  … and {self.chosen - shown:,} more")
        if self.recorded:
            lines.append(f"written to {self.out} and recorded (export {self.export_id}); these rows "
                         "will not be proposed again")
        elif self.out:
            lines.append(f"written to {self.out} (not recorded)")
        elif self.chosen:
            lines.append("preview only: nothing written or recorded (give --out FILE to export)")
        return "\n".join(lines)


# ================================================================= budgets

def parse_strategies(spec: str | Mapping[str, int | None] | Sequence[tuple[str, int | None]],
                     n: int | None = None) -> tuple[tuple[str, int], ...]:
    """Budgets per strategy from ``"uncertainty:50,segment:30,random:20"`` (or a mapping).

    Strategies without a count share what ``n`` leaves over evenly (the earlier ones get the
    remainder); without ``n`` every strategy needs a count and ``n`` is their sum. Unknown names,
    repeated names, counts that are not positive integers and budgets that do not add up to ``n``
    are bad input (``MlmonError`` naming them).
    """
    items = _spec_items(spec)
    if not items:
        raise MlmonError(f"no strategy given: choose from {', '.join(STRATEGIES)}")
    names = [name for name, _ in items]
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown:
        raise MlmonError(f"unknown strategy {unknown[0]!r}: choose from {', '.join(STRATEGIES)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MlmonError(f"strategy {repeated[0]!r} is given twice; give each strategy once")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise MlmonError(f"--n {n}: ask for at least one row")
    given = sum(count for _, count in items if count is not None)
    missing = [name for name, count in items if count is None]
    if n is None:
        if missing:
            raise MlmonError(f"strategy {missing[0]!r} has no count: give --n N, or a count for "
                             "every strategy (uncertainty:50,random:20)")
        n = given
    if given > n:
        raise MlmonError(f"the strategy budgets add up to {given:,}, more than --n {n:,}")
    if not missing and given != n:
        raise MlmonError(f"the strategy budgets add up to {given:,} but --n is {n:,}; leave a "
                         "count out to give it the rest")
    if n > MAX_QUEUE_ROWS:
        raise MlmonError(f"--n {n:,}: a queue holds at most {MAX_QUEUE_ROWS:,} rows")
    left = n - given
    share, extra = divmod(left, len(missing)) if missing else (0, 0)
    budgets = []
    for name, count in items:
        if count is None:
            count = share + (1 if extra > 0 else 0)
            extra -= 1
        budgets.append((name, int(count)))
    return tuple(budgets)


def _spec_items(spec) -> list[tuple[str, int | None]]:
    if isinstance(spec, str):
        items = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, count = part.partition(":")
            items.append((name.strip(), _count(name.strip(), count) if sep else None))
        return items
    pairs = spec.items() if isinstance(spec, Mapping) else spec
    return [(str(name), None if count is None else _count(str(name), count)) for name, count in pairs]


def _count(name: str, text: Any) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < 1 or isinstance(text, bool) or \
            (isinstance(text, float) and not float(text).is_integer()):
        raise MlmonError(f"strategy {name}:{text}: the count must be a whole number of rows ≥ 1")
    return value


# ================================================================= the queue

def label_queue(view, window: Window | None = None, segment: Segment = (),
                strategies: str | Mapping[str, int | None] = "uncertainty", n: int | None = None,
                *, seed: int = DEFAULT_SEED, reference: Window | None = None,
                slice_mode: str = "weak", exclude_exported: bool = True,
                progress: Progress | None = None) -> LabelQueue:
    """Choose up to ``n`` unlabeled rows of ``window`` (default: the last 7 days) and ``segment``.

    ``strategies`` is ``"uncertainty:50,segment:30,random:20"`` or a mapping name → count (None:
    an even share of ``n``). ``reference`` is the drift strategy's reference window and the
    degraded slices' comparison window (default: the log's reference window); ``slice_mode`` is
    ``weak`` or ``degraded``. Rows in the export ledger are left out unless ``exclude_exported``
    is False. Nothing is written: see ``export_queue``.
    """
    from mlmon_core.windows import default_window, reference_window

    budgets = parse_strategies(strategies, n)
    if slice_mode not in SLICE_MODES:
        raise MlmonError(f"slice mode {slice_mode!r}: choose {' or '.join(SLICE_MODES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MlmonError(f"--seed {seed}: give a whole number ≥ 0")
    window = window or default_window(view)
    segment = tuple(segment or ())
    sql.compile_segment(segment, view.column_types)
    picker = _Picker(view, window, segment, int(seed), reference or reference_window(view),
                     slice_mode, exclude_exported, progress)
    return picker.run(budgets)


@dataclass
class _Pick:
    """A strategy's chosen ids in order, their reasons, and the rows' details when it read them."""

    ids: list[Any]
    reasons: list[str]
    reason: str | None = None
    note: str | None = None
    details: pd.DataFrame | None = None


class _Picker:
    """Fills a queue strategy by strategy, keeping the ids chosen so far out of later picks."""

    def __init__(self, view, window: Window, segment: Segment, seed: int, reference: Window,
                 slice_mode: str, exclude_exported: bool, progress: Progress | None):
        self.view, self.window, self.segment, self.seed = view, window, segment, seed
        self.reference, self.slice_mode = reference, slice_mode
        self.tell = progress or (lambda fraction, message: None)
        roles = view.roles
        self.id = Ident(roles.id) if roles.id else None
        self.unlabeled = sql.render(_IS_NULL, c=Ident(roles.target)) if roles.target else None
        self.not_exported = _not_exported(view) if exclude_exported and roles.id else None
        self.columns = sql.identifiers(_detail_columns(view))
        self.chosen: list[Any] = []
        self.details: list[pd.DataFrame] = []

    def run(self, budgets: tuple[tuple[str, int], ...]) -> LabelQueue:
        requested = sum(count for _, count in budgets)
        strategy_column, reason_column = _own_columns(self.view)
        roles = self.view.roles
        base = LabelQueue(window=self.window, segment=self.segment, requested=requested,
                          rows=pd.DataFrame(), strategies=(), id_column=roles.id, seed=self.seed,
                          strategy_column=strategy_column, reason_column=reason_column,
                          score_column=roles.score, prediction_column=roles.prediction)
        if self.id is None:
            why = ("not computable because the log has no id column: returned labels are joined "
                   "on it (set [columns] id)")
            return replace(base, reason=why, rows=_empty_rows(self.view, base),
                           strategies=tuple(StrategyOutcome(name, count, 0, why)
                                            for name, count in budgets))
        self.tell(0.0, "counting unlabeled rows")
        total, unlabeled, pool = self._counts()
        base = replace(base, window_rows=total, unlabeled_rows=unlabeled, pool=pool)
        if pool == 0:
            why = self._empty_reason(total, unlabeled)
            return replace(base, reason=why, rows=_empty_rows(self.view, base),
                           strategies=tuple(StrategyOutcome(name, count, 0, why)
                                            for name, count in budgets))
        outcomes, picks = [], []
        for index, (name, budget) in enumerate(budgets):
            start = index / len(budgets)
            self.tell(0.05 + 0.9 * start, f"{name}: choosing {budget:,} rows")
            pick = getattr(self, f"_{name}")(budget)
            ids, reasons = _first_occurrences(pick.ids, pick.reasons, set(self.chosen))
            self.chosen.extend(ids)
            if pick.details is not None and not pick.details.empty:
                self.details.append(pick.details[_detail_columns(self.view)])
            picks.extend((row_id, name, why) for row_id, why in zip(ids, reasons))
            reason = pick.reason
            if reason is None and len(ids) < budget:
                reason = (f"only {len(ids):,} unlabeled rows were left for it (the window has "
                          f"{pool:,} not yet exported, {len(self.chosen) - len(ids):,} taken by "
                          "earlier strategies)")
            outcomes.append(StrategyOutcome(name, budget, len(ids), reason, pick.note))
        self.tell(0.97, "reading the chosen rows")
        rows = self._details(picks, base)
        self.tell(1.0, "done")
        return replace(base, rows=rows, strategies=tuple(outcomes))

    # ------------------------------------------------------------ the pool

    def where(self, *extra: Fragment | None) -> Fragment:
        """The pool: window, segment, no target, never exported, not chosen yet (plus ``extra``)."""
        parts = [self.unlabeled, self.not_exported]
        if self.chosen:
            parts.append(sql.render(_NOT_CHOSEN, id=self.id, ids=sql.param(list(self.chosen))))
        return self.view.where(self.window, self.segment,
                               extra=[p for p in (*parts, *extra) if p is not None])

    def _counts(self) -> tuple[int, int, int]:
        unlabeled = self.unlabeled or sql.TRUE
        not_exported = self.not_exported or sql.TRUE
        query = sql.render(_COUNTS, unlabeled=unlabeled, not_exported=not_exported,
                           log=self.view.relation, where=self.view.where(self.window, self.segment))
        total, open_rows, pool = self.view.fetchall(query)[0]
        return int(total), int(open_rows), int(pool)

    def _empty_reason(self, total: int, unlabeled: int) -> str:
        where = f"{self.window} ({sql.describe_segment(self.segment)})"
        if total == 0:
            return f"no rows to label: the window {where} has no rows"
        if unlabeled == 0:
            return f"no rows to label: all {total:,} rows of {where} already have labels"
        return (f"no rows to label: the {unlabeled:,} unlabeled rows of {where} were all exported "
                "for labeling before")

    # ------------------------------------------------------------ strategies

    def _uncertainty(self, budget: int) -> _Pick:
        view = self.view
        roles = view.roles
        if view.task == "regression":
            return _Pick([], [], "uncertainty needs a classifier's score and decision threshold; "
                                 "this is a regression model (use diverse, drift or random)")
        if view.task == "multiclass":
            return _Pick([], [], "multiclass uncertainty (the margin between the two most likely "
                                 "classes) needs one score column per class; this log has "
                                 f"{'a single score column' if roles.score else 'no score column'}"
                                 " (use diverse, segment, drift or random)")
        if not roles.score:
            return _Pick([], [], "uncertainty needs the model's score: the log has no score column "
                                 "(set [columns] score)")
        if not sql.is_numeric_type(view.column_types[roles.score]):
            return _Pick([], [], f"uncertainty needs a numeric score; column {roles.score!r} is "
                                 f"{view.column_types[roles.score]}")
        threshold = float(view.config.model.threshold)
        score = Ident(roles.score)
        query = sql.render(_UNCERTAINTY, columns=self.columns, id=self.id, score=score,
                           threshold=threshold, log=view.relation,
                           where=self.where(sql.render(_FINITE, c=score)), n=budget)
        found = view.fetch_df(query)
        reasons = [f"score {_short(s, 6)} is {_short(d, 2)} {'above' if s > threshold else 'below'}"
                   f" the threshold {threshold:g}" if d > 0 else
                   f"score {_short(s, 6)} is exactly at the threshold {threshold:g}"
                   for s, d in zip(found["__score"], found["__distance"])]
        why = None
        if found.empty:
            why = f"no unlabeled row left has a score in column {roles.score!r}"
        return _Pick(found[roles.id].tolist(), reasons, why, details=found)

    def _random(self, budget: int) -> _Pick:
        query = sql.render(_RANDOM, columns=self.columns, id=self.id, log=self.view.relation,
                           where=self.where(), seed=self.seed, n=budget)
        found = self.view.fetch_df(query)
        ids = found[self.view.roles.id].tolist()
        return _Pick(ids, [f"random baseline (seed {self.seed})"] * len(ids), details=found)

    def _segment(self, budget: int) -> _Pick:
        report = self._slices()
        what = "weak" if self.slice_mode == "weak" else "degraded"
        if not report.slices:
            return _Pick([], [], f"no {what} slice found: {report.reason or 'none reported'}")
        slices = report.slices[:SEGMENT_SLICES]
        types = self.view.column_types
        whens = [sql.render(_WHEN, condition=sql.compile_segment(s.conditions, types).fragment,
                            value=i + 1) for i, s in enumerate(slices)]
        group = sql.render(_CASE, whens=sql.join(whens, " "))
        query = sql.render(_ROUND_ROBIN, id=self.id, group=group, log=self.view.relation,
                           where=self.where(), seed=self.seed, order=_BY_GROUP, n=budget)
        found = self.view.fetchall(query)
        texts = [_slice_reason(report, s, len(self.segment), what) for s in slices]
        note = (f"spread over the top {len(slices)} {what} slice(s) by "
                f"{report.metric_description}: "
                + "; ".join(sql.describe_segment(s.conditions[len(self.segment):]) for s in slices))
        why = None if found else f"no unlabeled row left in the {what} slices"
        return _Pick([r[0] for r in found], [texts[int(r[1]) - 1] for r in found], why, note)

    def _slices(self):
        from mlmon_core import slices

        key = ("slices", _data_identity(self.view), self.window, self.segment, self.slice_mode,
               self.reference)
        if self.slice_mode == "weak":
            compute = lambda: slices.find_slices(self.view, self.window, self.segment,
                                                 top=SEGMENT_SLICES)
        else:
            compute = lambda: slices.find_degraded_slices(self.view, self.window, self.reference,
                                                          self.segment, top=SEGMENT_SLICES)
        return _memoized(key, compute)

    def _diverse(self, budget: int) -> _Pick:
        features = _usable_features(self.view)
        if not features:
            return _Pick([], [], "diverse needs numerical or categorical feature columns; the log "
                                 "has none")
        strata = _memoized(("strata", _data_identity(self.view), self.window, self.segment,
                            self.reference, self.seed),
                           lambda: _choose_strata(self.view, features, self.window, self.segment,
                                                  self.reference, self.seed))
        codings, note = strata
        if not codings:
            return _Pick([], [], note)
        key = _stratum_key(codings)
        query = sql.render(_ROUND_ROBIN, id=self.id, group=key, log=self.view.relation,
                           where=self.where(), seed=self.seed, order=_BY_SIZE, n=budget)
        found = self.view.fetchall(query)
        names = [_code_names(c) for c in codings]
        reasons = ["diverse: stratum " + " × ".join(
            names[i][code] for i, code in enumerate(_decode(int(r[1]), codings))) for r in found]
        why = None if found else "no unlabeled row left"
        return _Pick([r[0] for r in found], reasons, why, note)

    def _drift(self, budget: int) -> _Pick:
        view = self.view
        features = _usable_features(view)
        if not features:
            return _Pick([], [], "drift needs numerical or categorical feature columns; the log "
                                 "has none")
        fitted = _memoized(("drift", _data_identity(view), self.window, self.segment,
                            self.reference, tuple(features), self.seed),
                           lambda: _fit_domain_classifier(view, features, self.window,
                                                          self.segment, self.reference, self.seed))
        if isinstance(fitted, str):
            return _Pick([], [], fitted)
        query = sql.render(_POOL_FOLDS, id=self.id, fold_seed=self.seed + 1, columns=self.columns,
                           log=view.relation, where=self.where(), seed=self.seed,
                           n=DRIFT_POOL_ROWS)
        pool = view.fetch_df(query)
        if pool.empty:
            return _Pick([], [], "no unlabeled row left")
        pool["__p"] = fitted.probability(pool)
        ordered = pool.sort_values(["__p", view.roles.id], ascending=[False, True],
                                   kind="stable").head(budget)
        reasons = [f"drift classifier: {p:.2f} probability of being unlike the reference"
                   for p in ordered["__p"]]
        note = fitted.note
        if len(pool) >= DRIFT_POOL_ROWS:
            note += (f"; the top rows of a random sample of {DRIFT_POOL_ROWS:,} candidates were "
                     "taken")
        return _Pick(ordered[view.roles.id].tolist(), reasons, None, note, details=ordered)

    # ------------------------------------------------------------ the chosen rows

    def _details(self, picks: list[tuple[Any, str, str]], base: LabelQueue) -> pd.DataFrame:
        """The chosen rows in order with strategy, reason and details (one query for the rows
        whose strategy did not read them)."""
        if not picks:
            return _empty_rows(self.view, base)
        roles = self.view.roles
        known = pd.concat(self.details, ignore_index=True) if self.details else None
        have = set(known[roles.id].tolist()) if known is not None else set()
        missing = [p[0] for p in picks if p[0] not in have]
        frames = [known] if known is not None else []
        if missing:
            inside = sql.render(_CHOSEN, id=self.id, ids=sql.param(missing))
            query = sql.render(_DETAILS, columns=self.columns, log=self.view.relation,
                               where=self.view.where(self.window, self.segment, extra=[inside]))
            frames.append(self.view.fetch_df(query))
        frames = [f for f in frames if not f.empty]
        if not frames:
            return _empty_rows(self.view, base)
        details = (pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]) \
            .drop_duplicates(subset=[roles.id], keep="first")
        order = pd.DataFrame({roles.id: [p[0] for p in picks],
                              base.strategy_column: [p[1] for p in picks],
                              base.reason_column: [p[2] for p in picks]})
        merged = order.merge(details, on=roles.id, how="left", sort=False)
        return merged[_row_columns(self.view, base)].reset_index(drop=True)


def _first_occurrences(ids: list[Any], reasons: list[str], taken: set) -> tuple[list, list]:
    """Drop repeated ids (a log whose ids repeat across models) and ids taken already."""
    seen = set(taken)
    kept_ids, kept_reasons = [], []
    for row_id, why in zip(ids, reasons):
        if row_id in seen:
            continue
        seen.add(row_id)
        kept_ids.append(row_id)
        kept_reasons.append(why)
    return kept_ids, kept_reasons


def _detail_columns(view) -> list[str]:
    roles = view.roles
    wanted = [roles.id, roles.timestamp, *roles.features, roles.prediction, roles.score]
    return list(dict.fromkeys(c for c in wanted if c))


def _row_columns(view, base: LabelQueue) -> list[str]:
    roles = view.roles
    wanted = [roles.id, base.strategy_column, base.reason_column, roles.score, roles.prediction,
              roles.timestamp, *roles.features]
    return list(dict.fromkeys(c for c in wanted if c))


def _empty_rows(view, base: LabelQueue) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in _row_columns(view, base)})


def _own_columns(view) -> tuple[str, str]:
    """Names of the queue's strategy and reason columns (prefixed when the log has such columns)."""
    taken = set(view.columns)
    return tuple(name if name not in taken else f"mlmon_{name}" for name in ("strategy", "reason"))


def _usable_features(view) -> list[str]:
    return [f for f in view.roles.features if view.kind(f) in _FEATURE_KINDS]


def _short(value: float, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


# ================================================================= segment strategy

def _slice_reason(report, found, outer: int, what: str) -> str:
    from mlmon_core.slices import METRIC_WORDS

    words = METRIC_WORDS.get(report.metric, report.metric)
    if str(report.metric_description).startswith("estimated"):
        words = "estimated " + words
    where = sql.describe_segment(found.conditions[outer:])
    if what == "weak":
        return (f"in weak slice '{where}' ({words} {found.value:.2f} vs "
                f"{found.complement_value:.2f} elsewhere)")
    before = found.reference_value
    shown = f"{before:.2f}" if before is not None else "n/a"
    return f"in degraded slice '{where}' ({words} rose from {shown} to {found.value:.2f})"


# ================================================================= diverse strategy

def _choose_strata(view, features: list[str], window: Window, segment: Segment,
                   reference: Window, seed: int) -> tuple[list, str]:
    """The features to stratify over, coded into bins, and a note saying which and why."""
    from mlmon_core.slices import FeatureCoding

    types = view.column_types
    numerical = [f for f in features if view.kind(f) == "numerical"]
    edges = _quartile_edges(view, numerical, reference, window, segment, seed)
    provisional = {f: FeatureCoding(f, "numerical", types[f], edges=edges[f]) for f in numerical}
    output = _model_output(view)
    records = _profile(view, features, provisional, output, window, segment, seed)
    codings, strength = [], {}
    for feature in features:
        groups = records[feature]
        if feature in provisional:
            coding = provisional[feature]
            bins = {int(value): stats for value, stats in groups.items()}
        else:
            ranked = sorted(((stats[0], value) for value, stats in groups.items()
                             if value is not None), key=lambda p: (-p[0], str(p[1])))
            kept = tuple(_plain(v) for _, v in ranked[:DIVERSE_CATEGORIES])
            coding = FeatureCoding(feature, "categorical", types[feature], categories=kept)
            bins = _merge_other(groups, kept)
        occupied = sum(1 for stats in bins.values() if stats[0] > 0)
        if occupied < 2:
            continue
        codings.append(coding)
        strength[feature] = _eta_squared(bins.values(), records[None]) if output is not None else 0.0
    if not codings:
        return [], ("diverse needs a feature with at least two values in the window; every "
                    "feature is constant or missing")
    codings.sort(key=lambda c: -(strength[c.name] if math.isfinite(strength[c.name]) else -1.0))
    chosen = codings[:DIVERSE_FEATURES]
    names = ", ".join(c.name for c in chosen)
    if output is None:
        note = f"stratified over {names} (the log has no score to rank the features by)"
    else:
        shown = ", ".join(f"{c.name} η²={strength[c.name]:.2f}" for c in chosen)
        note = (f"stratified over the {len(chosen)} features that explain most of the model "
                f"output's variance ({shown}); numerical bins are reference-window quartiles")
    return chosen, note


def _model_output(view) -> Fragment | None:
    """The model's output as a number: the score, a regression's prediction, or 0/1 predicted class."""
    roles = view.roles
    types = view.column_types
    if roles.score and sql.is_numeric_type(types[roles.score]):
        return sql.render("CAST({s} AS DOUBLE)", s=Ident(roles.score))
    if roles.prediction and view.task == "regression" and sql.is_numeric_type(types[roles.prediction]):
        return sql.render("CAST({p} AS DOUBLE)", p=Ident(roles.prediction))
    if roles.prediction and view.task == "binary":
        return sql.render("CAST(({p} = {positive}) AS DOUBLE)", p=Ident(roles.prediction),
                          positive=sql.param(view.positive_label))
    return None


def _quartile_edges(view, numerical: list[str], reference: Window, window: Window,
                    segment: Segment, seed: int) -> dict[str, tuple]:
    """Quartile edges of each numerical feature in the reference window (else in the window),
    from a sample; every edge is a logged value, and one at the minimum is dropped."""
    out: dict[str, tuple] = {}
    missing = list(numerical)
    positions = sql.join([sql.render("{p}", p=i / DIVERSE_BINS) for i in range(1, DIVERSE_BINS)])
    for where_window in (reference, window):
        if not missing:
            break
        quantiles = sql.join([sql.render(_QUANTILES, c=Ident(c), positions=positions)
                              for c in missing])
        query = sql.render(_EDGES, quantiles=quantiles, columns=sql.identifiers(missing),
                           log=view.relation, where=view.where(where_window, segment),
                           id=Ident(view.roles.id), seed=seed, n=PROFILE_SAMPLE_ROWS)
        row = view.fetchall(query)[0]
        for i, name in enumerate(missing):
            values, low = row[2 * i], row[2 * i + 1]
            kept = {float(v): _plain(v) for v in values or ()
                    if v is not None and math.isfinite(float(v))
                    and (low is None or float(v) > float(low))}
            if kept:
                out[name] = tuple(kept[k] for k in sorted(kept))
        missing = [name for name in missing if name not in out]
    out.update({name: () for name in missing})
    return out


def _profile(view, features: list[str], numerical: Mapping[str, Any], output: Fragment | None,
             window: Window, segment: Segment, seed: int) -> dict[Any, dict]:
    """Per feature value (categorical) or bin (numerical): rows and the output's n, sum, sum of
    squares, from one GROUPING SETS query over a sample of the window; key None is the total."""
    raw = sql.join([sql.render("{code} AS {alias}", code=numerical[f].code_sql(), alias=Ident(f))
                    if f in numerical else sql.render("{c}", c=Ident(f)) for f in features])
    columns = sql.identifiers(features)
    groupings = sql.join([sql.render("grouping({c})", c=Ident(f)) for f in features])
    sets = sql.join([sql.render("({c})", c=Ident(f)) for f in features])
    query = sql.render(_PROFILE, columns=columns, groupings=groupings, raw=raw,
                       output=output if output is not None else Fragment("CAST(NULL AS DOUBLE)"),
                       log=view.relation, where=view.where(window, segment),
                       id=Ident(view.roles.id), seed=seed, n=PROFILE_SAMPLE_ROWS, sets=sets)
    k = len(features)
    out: dict[Any, dict] = {f: {} for f in features}
    for record in view.fetchall(query):
        values, flags = record[:k], record[k:2 * k]
        stats = tuple(float(v or 0) for v in record[2 * k:])
        if all(flags):
            out[None] = stats
            continue
        feature = next(i for i, flag in enumerate(flags) if flag == 0)
        out[features[feature]][values[feature]] = stats
    out.setdefault(None, (0.0, 0.0, 0.0, 0.0))
    return out


def _merge_other(groups: Mapping[Any, tuple], kept: tuple) -> dict[int, tuple]:
    """Per-value statistics summed into the categorical coding's codes (0 null, last other)."""
    index = {value: i + 1 for i, value in enumerate(kept)}
    other = len(kept) + 1
    out: dict[int, np.ndarray] = {}
    for value, stats in groups.items():
        code = 0 if value is None else index.get(_plain(value), other)
        out[code] = out.get(code, np.zeros(4)) + np.asarray(stats)
    return {code: tuple(stats) for code, stats in out.items()}


def _eta_squared(bins: Iterable[tuple], total: tuple) -> float:
    """Correlation ratio: the share of the output's variance between the bins' means."""
    _, n, s, q = total
    if n < 2:
        return 0.0
    total_ss = q - s * s / n
    if total_ss <= 1e-12 * max(q, 1.0):
        return 0.0
    between = sum(b[2] * b[2] / b[1] for b in bins if b[1] > 0) - s * s / n
    return float(min(max(between / total_ss, 0.0), 1.0))


def _stratum_key(codings) -> Fragment:
    """One integer per combination of the codings' codes (mixed radix)."""
    key = sql.render("CAST({code} AS INTEGER)", code=codings[0].code_sql())
    for coding in codings[1:]:
        key = sql.render("({key} * {radix} + {code})", key=key, radix=coding.n_codes,
                         code=coding.code_sql())
    return key


def _decode(key: int, codings) -> list[int]:
    codes = []
    for coding in reversed(codings):
        key, code = divmod(key, coding.n_codes)
        codes.append(code)
    return codes[::-1]


def _code_names(coding) -> dict[int, str]:
    """Plain words for each of a coding's codes."""
    from mlmon_core.slices import range_conditions

    names = {0: f"{coding.name} missing"}
    if coding.kind == "numerical":
        for code in range(1, len(coding.edges) + 2):
            names[code] = range_conditions(coding.name, coding.duck_type,
                                           *coding.bounds(code, code))[1]
        return names
    for i, value in enumerate(coding.categories):
        names[i + 1] = sql.Condition(coding.name, "==", value=value).describe()
    names[len(coding.categories) + 1] = f"{coding.name} other"
    return names


# ================================================================= drift strategy

@dataclass
class _DomainClassifier:
    """Two half-models (cross-fitting) plus the encoding they share."""

    features: list[str]
    numeric: list[bool]
    levels: dict[str, dict[Any, int]]
    models: tuple[Any, Any]
    auc: float
    rows: int
    note: str = ""

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """Numbers stay numbers (NaN for missing); categories become codes (unseen: the last)."""
        columns = []
        for feature, numeric in zip(self.features, self.numeric):
            series = frame[feature]
            if numeric:
                values = pd.to_numeric(series.astype(object), errors="coerce").to_numpy(
                    dtype=float, copy=True)
                values[~np.isfinite(values)] = np.nan
            else:
                levels = self.levels[feature]
                other = float(len(levels))
                values = np.array([np.nan if _missing(v) else levels.get(_plain(v), other)
                                   for v in series.astype(object)], dtype=float)
            columns.append(values)
        return np.column_stack(columns)

    def probability(self, frame: pd.DataFrame) -> np.ndarray:
        """P(current | row) from the half-model that did not learn from the row's fold."""
        from threadpoolctl import threadpool_limits

        matrix = self.matrix(frame)
        folds = frame["__fold"].to_numpy(dtype=int)
        out = np.empty(len(frame))
        with threadpool_limits(limits=1, user_api="openmp"):
            for fold in (0, 1):
                mask = folds == fold
                if mask.any():
                    out[mask] = self.models[1 - fold].predict_proba(matrix[mask])[:, 1]
        return out


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _fit_domain_classifier(view, features: list[str], window: Window, segment: Segment,
                           reference: Window, seed: int) -> _DomainClassifier | str:
    """Fit reference-vs-current half-models on bounded samples; a reason string when it cannot."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    id_column = Ident(view.roles.id)
    columns = sql.identifiers(features)
    sides = {}
    for side, where_window in (("current", window), ("reference", reference)):
        sides[side] = sql.render(_SIDE, side=sql.param(side), id=id_column, fold_seed=seed + 1,
                                 columns=columns, log=view.relation,
                                 where=view.where(where_window, segment), seed=seed,
                                 n=DRIFT_FIT_ROWS)
    frame = view.fetch_df(sql.render(_FIT_SAMPLE, current=sides["current"],
                                     reference=sides["reference"]))
    current = frame[frame["__side"] == "current"]
    past = frame[frame["__side"] == "reference"]
    size = min(len(current), len(past))
    if size < DRIFT_MIN_ROWS:
        return (f"drift needs at least {DRIFT_MIN_ROWS} rows in the window and in the reference "
                f"window {reference}; they have {len(current):,} and {len(past):,}")
    balanced = pd.concat([current.head(size), past.head(size)], ignore_index=True)
    numeric = [view.kind(f) == "numerical" for f in features]
    levels = {}
    for feature, is_number in zip(features, numeric):
        if not is_number:
            counts = balanced[feature].astype(object).map(
                lambda v: None if _missing(v) else _plain(v)).value_counts()
            levels[feature] = {value: i for i, value in enumerate(counts.index[:DRIFT_CATEGORIES])}
    encoder = _DomainClassifier(features, numeric, levels, (None, None), float("nan"), size * 2)
    matrix = encoder.matrix(balanced)
    label = (balanced["__side"] == "current").to_numpy(dtype=int)
    folds = balanced["__fold"].to_numpy(dtype=int)
    models = []
    with threadpool_limits(limits=1, user_api="openmp"):
        for fold in (0, 1):
            mask = folds == fold
            if len(np.unique(label[mask])) < 2 or mask.sum() < DRIFT_MIN_ROWS:
                return ("drift could not split its sample into two halves holding both windows' "
                        "rows; widen the window")
            model = HistGradientBoostingClassifier(
                max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=20,
                l2_regularization=1.0, early_stopping=False, random_state=seed,
                categorical_features=np.array([not n for n in numeric]))
            models.append(model.fit(matrix[mask], label[mask]))
        held_out = np.empty(len(label))
        for fold in (0, 1):
            mask = folds == fold
            held_out[mask] = models[1 - fold].predict_proba(matrix[mask])[:, 1]
    auc = float(roc_auc_score(label, held_out))
    strength = ("the windows are hard to tell apart, so these rows are barely unusual"
                if auc < 0.55 else "the classifier tells the windows apart")
    note = (f"domain classifier (gradient boosting, reference {reference} vs the window) on "
            f"{size:,} rows per side: held-out ROC AUC {auc:.2f}; {strength}")
    return replace(encoder, models=tuple(models), auc=auc, note=note)


# ================================================================= memo

_MEMO: dict[tuple, Any] = {}
_MEMO_LOCK = threading.Lock()


def _memoized(key: tuple, compute: Callable[[], Any]) -> Any:
    """The last few slice reports, strata and domain classifiers: a preview that changes only its
    budgets, or a second look after an export, does not search or fit again."""
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    value = compute()
    with _MEMO_LOCK:
        if len(_MEMO) >= MAX_MEMO:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = value
    return value


def _data_identity(view) -> tuple:
    """The log's data files plus the roles the strategies read (a memo key)."""
    roles = view.roles
    return (roles.id, roles.target, roles.score, roles.features, *view.data_identity())


# ================================================================= ledger

def ledger_folder(view) -> Path:
    """Where exports are recorded: ``.mlmon/label_exports`` beside the config."""
    return view.config.folder / LEDGER_FOLDER


def ledger_parts(view) -> list[Path]:
    """The ledger's Parquet parts (one per export), oldest first; temporary files are skipped."""
    folder = ledger_folder(view)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("export-*.parquet") if p.is_file())


def _not_exported(view) -> Fragment | None:
    parts = ledger_parts(view)
    if not parts:
        return None
    files = sql.param([str(p) for p in parts])
    id_column = Ident(view.roles.id)
    try:
        id_type = sql.type_name(view.column_types[view.roles.id])
    except ValueError:
        return sql.render(_NOT_EXPORTED_TEXT, id=id_column, parts=files)
    return sql.render(_NOT_EXPORTED, id=id_column, type=id_type, parts=files)


def export_history(view, limit: int = 20) -> pd.DataFrame:
    """Past exports, newest first: export id, time (UTC), file, rows and rows per strategy."""
    parts = ledger_parts(view)
    columns = ["export_id", "exported_at", "file", "rows", "strategies"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    query = sql.render(_LEDGER_HISTORY, parts=sql.param([str(p) for p in parts]), n=int(limit))
    return view.fetch_df(query)[columns]


def exported_rows(view) -> tuple[int, int]:
    """Rows recorded in the ledger and the number of exports."""
    parts = ledger_parts(view)
    if not parts:
        return 0, 0
    rows, exports = view.fetchall(sql.render(_LEDGER_TOTAL, parts=sql.param([str(p) for p in parts])))[0]
    return int(rows), int(exports)


def label_columns(view) -> list[str]:
    """The columns a file of returned labels needs (those of the labels already stored, if any)."""
    from mlmon_core.source import INTERNAL_COLUMNS

    if view.label_files:
        try:
            described = view.fetchall(sql.render(_DESCRIBE, v=Ident("labels_raw")))
            return [row[0] for row in described if row[0] not in INTERNAL_COLUMNS]
        except MlmonError:
            pass
    roles = view.roles
    target = roles.target or view.config.columns.target or "target"
    return [c for c in (roles.id, target) if c]


# ================================================================= export

def export_queue(view, queue: LabelQueue, out: str | Path, *, record: bool = True) -> LabelQueue:
    """Write the queue's rows to ``out`` (.csv or .parquet) and record them in the ledger.

    The file is written under a temporary name and renamed; the ledger part likewise, after the
    file is in place (if recording fails, the file is removed again, so nothing is exported that
    the ledger does not know). An empty queue writes nothing. Bad paths are ``MlmonError``s.
    """
    path, fmt = check_export_path(out)
    if queue.chosen == 0:
        return queue
    frame = queue.rows
    moment = datetime.now(timezone.utc).replace(tzinfo=None)
    export_id = f"{moment.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    ledger = None
    if record:
        ledger = pd.DataFrame({
            "export_id": export_id, "exported_at": moment,
            "id": frame[queue.id_column].map(lambda v: str(_plain(v))).astype(object),
            "strategy": frame[queue.strategy_column].astype(object),
            "reason": frame[queue.reason_column].astype(object),
            "file": str(path), "window": str(queue.window),
            "segment": sql.segment_to_text(queue.segment),
        })
    _write_atomically(frame, path, fmt, f"--out {out}")
    if ledger is not None:
        try:
            folder = ledger_folder(view)
            _write_atomically(ledger, folder / f"export-{export_id}.parquet", "parquet",
                              f"the export ledger {folder}")
        except MlmonError:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
    return replace(queue, out=str(path), recorded=ledger is not None,
                   export_id=export_id if ledger is not None else None)


def check_export_path(out: str | Path) -> tuple[Path, str]:
    """The absolute export path and its format (csv or parquet); ``MlmonError`` when unusable."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise MlmonError(f"--out {out}: is a directory; name a file")
    fmt = EXPORT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MlmonError(f"--out {out}: give a file ending in .csv or .parquet (it ends in "
                         f"{path.suffix or 'nothing'!r})")
    return path.resolve(), fmt


def _write_atomically(frame: pd.DataFrame, path: Path, fmt: str, what: str) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise MlmonError(f"{what}: cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
