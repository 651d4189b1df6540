"""The project file, ``mlmon.toml``, read into frozen dataclasses.

Validation is strict on purpose: an unknown key is almost always a typo, and a silently ignored
typo is a monitoring blind spot. Every error names the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlmon_core.errors import ConfigError

TASKS = ("binary", "multiclass", "regression")
WEBHOOK_SEND = ("fired", "always")
DRIFT_TESTS = ("ks", "chisquare", "z", "wasserstein", "jensenshannon", "psi")


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)``; either bound may be open (None)."""

    start: datetime | None
    end: datetime | None

    def __str__(self) -> str:
        def fmt(moment: datetime | None) -> str:
            if moment is None:
                return ""
            if moment.hour == moment.minute == moment.second == moment.microsecond == 0:
                return moment.date().isoformat()
            return moment.isoformat()

        return f"{fmt(self.start)}..{fmt(self.end)}"

    def to_json(self) -> dict[str, str | None]:
        """The window as ISO-8601 strings."""
        return {
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
        }


@dataclass(frozen=True)
class SourceConfig:
    """Where the log lives. Paths are absolute (resolved against the config's folder)."""

    predictions: str
    labels: str | None = None
    table: str | None = None
    labels_table: str | None = None


@dataclass(frozen=True)
class ColumnsConfig:
    """Column roles. ``None`` means: infer by name when the log is opened."""

    id: str | None = None
    timestamp: str | None = None
    prediction: str | None = None
    score: str | None = None
    target: str | None = None
    model: str | None = None
    variant: str | None = None
    latency: str | None = None
    status: str | None = None
    label_timestamp: str | None = None
    features: tuple[str, ...] | None = None
    categorical: tuple[str, ...] = ()
    numerical: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    attribution_prefix: str = "shap__"


@dataclass(frozen=True)
class ModelConfig:
    """What the model does and, optionally, where the model file is."""

    task: str | None = None
    positive_label: Any = None
    threshold: float = 0.5
    path: str | None = None
    trust: bool = False


@dataclass(frozen=True)
class DriftColumnConfig:
    """A per-column override of the drift test and its threshold."""

    test: str | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class DriftConfig:
    """Drift settings: per-column overrides and the dataset-drift share."""

    columns: dict[str, DriftColumnConfig] = field(default_factory=dict)
    dataset_share: float = 0.5


@dataclass(frozen=True)
class AlertDefaultsConfig:
    """``[alerts_defaults]``: whether the built-in alerts run, and which of them are turned off
    (their names are checked by ``alerts.py``, which defines them)."""

    enabled: bool = True
    disable: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebhookConfig:
    """``[alerts_webhook]``: where ``mlmon check`` POSTs its result, and when (``fired``: only
    when an alert fires; ``always``: every run)."""

    url: str
    send: str = "fired"


@dataclass(frozen=True)
class Config:
    """A whole project file."""

    path: Path | None
    source: SourceConfig
    columns: ColumnsConfig = ColumnsConfig()
    model: ModelConfig = ModelConfig()
    reference: Window | None = None
    drift: DriftConfig = DriftConfig()
    alerts: tuple[dict[str, Any], ...] = ()
    alerts_defaults: AlertDefaultsConfig = AlertDefaultsConfig()
    alerts_webhook: WebhookConfig | None = None
    attributions: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def folder(self) -> Path:
        """The folder relative paths resolve against."""
        return self.path.parent if self.path else Path.cwd()


class _Reader:
    """Reads one table of the TOML file, remembering which keys were used."""

    def __init__(self, table: dict[str, Any], where: str, file: Path | str):
        self.table = table
        self.where = where
        self.file = file

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: [{self.where}] {key}: {problem}")

    def check_keys(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.table) - allowed)
        if unknown:
            raise ConfigError(
                f"{self.file}: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(k) for k in unknown)} in [{self.where}]; "
                f"allowed keys are: {', '.join(sorted(allowed))}"
            )

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.table.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {type(value).__name__} {value!r}")
        if isinstance(value, str) and not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def number(self, key: str, default: float | None = None) -> float | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def moment(self, key: str) -> datetime | None:
        value = self.table.get(key)
        if value is None:
            return None
        return parse_moment(value, f"{self.file}: [{self.where}] {key}")

    def subtable(self, key: str) -> dict[str, Any]:
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {value!r}")
        return value


def parse_moment(value: Any, what: str) -> datetime:
    """Parse a date or date-time (TOML value or ISO-8601 text) into a naive datetime."""
    from datetime import date

    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else _to_naive_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"{what}: {value!r} is not a date; use ISO-8601 such as 2024-01-31 or "
                "2024-01-31T12:00"
            ) from None
        return _to_naive_utc(parsed) if parsed.tzinfo else parsed
    raise ConfigError(f"{what}: expected a date such as 2024-01-31, got {value!r}")


def _to_naive_utc(moment: datetime) -> datetime:
    from datetime import timezone

    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def _resolve(folder: Path, path: str | None) -> str | None:
    if path is None:
        return None
    candidate = Path(path).expanduser()
    return str(candidate if candidate.is_absolute() else (folder / candidate))


def _read_source(reader: _Reader, folder: Path) -> SourceConfig:
    reader.check_keys({"predictions", "labels", "table", "labels_table"})
    predictions = reader.string("predictions")
    if predictions is None:
        raise reader.fail("predictions", "is required: a file, glob or directory of predictions")
    return SourceConfig(
        predictions=_resolve(folder, predictions),
        labels=_resolve(folder, reader.string("labels")),
        table=reader.string("table"),
        labels_table=reader.string("labels_table"),
    )


def _read_columns(reader: _Reader) -> ColumnsConfig:
    single = ["id", "timestamp", "prediction", "score", "target", "model", "variant", "latency",
              "status", "label_timestamp"]
    lists = ["features", "categorical", "numerical", "ignore"]
    reader.check_keys(set(single) | set(lists) | {"attribution_prefix"})
    values: dict[str, Any] = {key: reader.string(key) for key in single}
    for key in lists:
        values[key] = reader.strings(key)
    for key in ("categorical", "numerical", "ignore"):
        values[key] = values[key] or ()
    both = sorted(set(values["categorical"]) & set(values["numerical"]))
    if both:
        raise reader.fail("categorical", f"{both} are also listed in numerical; pick one kind")
    values["attribution_prefix"] = reader.string("attribution_prefix", "shap__")
    return ColumnsConfig(**values)


def _read_model(reader: _Reader, folder: Path) -> ModelConfig:
    reader.check_keys({"task", "positive_label", "threshold", "path", "trust"})
    task = reader.string("task")
    if task is not None and task not in TASKS:
        raise reader.fail("task", f"{task!r} is not one of {', '.join(TASKS)}")
    positive = reader.table.get("positive_label")
    if positive is not None and not isinstance(positive, (str, int, bool)):
        raise reader.fail("positive_label", f"expected a string, integer or boolean, got {positive!r}")
    threshold = reader.number("threshold", 0.5)
    if not 0.0 < threshold < 1.0:
        raise reader.fail("threshold", f"must be between 0 and 1 (exclusive), got {threshold}")
    return ModelConfig(
        task=task,
        positive_label=positive,
        threshold=threshold,
        path=_resolve(folder, reader.string("path")),
        trust=reader.boolean("trust", False),
    )


def _read_reference(reader: _Reader) -> Window | None:
    if not reader.table:
        return None
    reader.check_keys({"start", "end"})
    window = Window(reader.moment("start"), reader.moment("end"))
    if window.start and window.end and window.start >= window.end:
        raise reader.fail("end", f"must be after start ({window.start} .. {window.end})")
    return window


def _read_drift(reader: _Reader, file: Path | str) -> DriftConfig:
    reader.check_keys({"columns", "dataset_share"})
    share = reader.number("dataset_share", 0.5)
    if not 0.0 < share <= 1.0:
        raise reader.fail("dataset_share", f"must be in (0, 1], got {share}")
    overrides: dict[str, DriftColumnConfig] = {}
    for column, table in reader.subtable("columns").items():
        sub = _Reader(table if isinstance(table, dict) else {"?": table},
                      f"drift.columns.{column}", file)
        if not isinstance(table, dict):
            raise sub.fail("", "expected a table such as { test = \"psi\", threshold = 0.2 }")
        sub.check_keys({"test", "threshold"})
        test = sub.string("test")
        if test is not None and test not in DRIFT_TESTS:
            raise sub.fail("test", f"{test!r} is not one of {', '.join(DRIFT_TESTS)}")
        overrides[column] = DriftColumnConfig(test=test, threshold=sub.number("threshold"))
    return DriftConfig(columns=overrides, dataset_share=share)


def _read_alerts_defaults(reader: _Reader) -> AlertDefaultsConfig:
    reader.check_keys({"enabled", "disable"})
    return AlertDefaultsConfig(enabled=reader.boolean("enabled", True),
                               disable=reader.strings("disable") or ())


def _read_alerts_webhook(reader: _Reader) -> WebhookConfig | None:
    if not reader.table:
        return None
    reader.check_keys({"url", "send"})
    url = reader.string("url")
    url = url.strip() if url is not None else None
    if url is None:
        raise reader.fail("url", "is required: the http(s) address to POST the result of "
                                 "`mlmon check` to")
    problem = webhook_url_problem(url)
    if problem:
        raise reader.fail("url", problem)
    send = reader.string("send", "fired")
    if send not in WEBHOOK_SEND:
        raise reader.fail("send", f"{send!r} is not one of {', '.join(WEBHOOK_SEND)}")
    return WebhookConfig(url=url, send=send)


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook (only http and https with a host), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL such as https://hooks.example.com/mlmon"
    return None


def config_from_dict(data: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed project file. ``path`` anchors relative paths and error messages."""
    file: Path | str = path if path is not None else "<config>"
    folder = path.parent if path is not None else Path.cwd()
    top = _Reader(data, "top level", file)
    sections = {"source", "columns", "model", "reference", "drift", "alerts", "attributions",
                "alerts_defaults", "alerts_webhook"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(
            f"{file}: unknown section{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; allowed: {', '.join(sorted(sections))}"
        )
    if "source" not in data:
        raise ConfigError(f"{file}: missing [source] section with a 'predictions' key")
    alerts = data.get("alerts", [])
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise top.fail("alerts", "expected [[alerts]] tables")
    return Config(
        path=path,
        source=_read_source(_Reader(top.subtable("source"), "source", file), folder),
        columns=_read_columns(_Reader(top.subtable("columns"), "columns", file)),
        model=_read_model(_Reader(top.subtable("model"), "model", file), folder),
        reference=_read_reference(_Reader(top.subtable("reference"), "reference", file)),
        drift=_read_drift(_Reader(top.subtable("drift"), "drift", file), file),
        alerts=tuple(alerts),
        alerts_defaults=_read_alerts_defaults(
            _Reader(top.subtable("alerts_defaults"), "alerts_defaults", file)),
        alerts_webhook=_read_alerts_webhook(
            _Reader(top.subtable("alerts_webhook"), "alerts_webhook", file)),
        attributions=dict(top.subtable("attributions")),
        raw=data,
    )


def load_config(path: str | Path) -> Config:
    """Read and validate ``mlmon.toml``; raise ``ConfigError`` naming the file and key."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "mlmon.toml"
    if not file.exists():
        raise ConfigError(f"{file}: config file not found (expected an mlmon.toml)")
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    return config_from_dict(data, file.resolve())


def config_for_file(predictions: str | Path, labels: str | Path | None = None) -> Config:
    """A config with every role inferred, for a log opened without a project file (e.g. upload)."""
    return Config(
        path=None,
        source=SourceConfig(
            predictions=str(Path(predictions).resolve()),
            labels=str(Path(labels).resolve()) if labels else None,
        ),
    )
