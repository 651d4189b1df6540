"""Alerts: rule validation, every rule type on planted synthetic data (values checked against
pandas/scikit-learn), the built-in alerts on the sample data's planted problems and on a clean
window, `mlmon check` exit codes, and the webhook (only ever POSTed to a local server on 127.0.0.1
that the test starts)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from mlmon_core import alerts, cli, sql
from mlmon_core.config import config_from_dict, load_config
from mlmon_core.errors import ConfigError
from mlmon_core.source import open_log
from tests.conftest import write_project

START = np.datetime64("2025-01-01T00:00:00")
REFERENCE = "2025-01-01..2025-01-15"
CLEAN = "2025-01-15..2025-01-22"
PLANTED = "2025-01-22..2025-01-29"


# ---------------------------------------------------------------- synthetic project

def _period(rng, first_day: int, days: int, per_day: int, offset: int, planted: bool = False):
    """A binary-classification log of one period; ``planted`` breaks it in every way a rule checks."""
    n = days * per_day
    ts = START + np.timedelta64(first_day, "D") + (rng.random(n) * days * 86400).astype("timedelta64[s]")
    age = rng.integers(18, 90, n).astype(float)
    income = rng.lognormal(10.5, 0.4, n)
    region = rng.choice(["north", "south", "east", "west"], n)
    truth = 1 / (1 + np.exp(-((age - 50) / 12 + (np.log(income) - 10.5) * 1.5)))
    target = (rng.random(n) < truth).astype(int)
    score = np.clip(truth + rng.normal(0, 0.02, n), 0.001, 0.999)
    prediction = (score >= 0.5).astype(int)
    latency = rng.gamma(4, 10, n)
    status = np.where(rng.random(n) < 0.005, "error", "ok")
    labeled = np.ones(n, bool)
    if planted:
        south = region == "south"
        prediction[south] = 1 - prediction[south]           # the model fails in one segment
        income = income * 0.5                                # drift
        income[rng.random(n) < 0.3] = np.nan                 # missing values
        region = np.where(rng.random(n) < 0.1, "mars", region)  # a new category
        age = np.where(rng.random(n) < 0.1, 150.0, age)     # out of range
        score = 0.5 + (score - 0.5) * 0.2                    # unsure scores: estimated quality falls
        latency = latency * 4
        status = np.where(rng.random(n) < 0.1, "error", status)
        labeled = rng.random(n) < 0.5                        # half the labels missing
    ids = np.array([f"r{offset + i}" for i in range(n)])
    frame = pd.DataFrame({"id": ids, "timestamp": ts, "age": age, "income": income,
                          "region": region, "prediction": prediction, "score": score,
                          "latency_ms": latency, "status": status})
    labels = pd.DataFrame({"id": ids[labeled], "target": target[labeled]})
    return frame, labels


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Reference (14 days, 200 rows a day), a clean week, and a planted week at 60 % volume."""
    rng = np.random.default_rng(3)
    parts = [_period(rng, 0, 14, 200, 0), _period(rng, 14, 7, 200, 10**6),
             _period(rng, 21, 7, 120, 2 * 10**6, planted=True)]
    predictions = pd.concat([p[0] for p in parts], ignore_index=True)
    labels = pd.concat([p[1] for p in parts], ignore_index=True)
    path = write_project(tmp_path_factory.mktemp("alerts") / "project", predictions, labels,
                         '[reference]\nstart = "2025-01-01"\nend = "2025-01-15"\n')
    frame = predictions.merge(labels, on="id", how="left")
    return path, open_log(load_config(path)), frame


RULES = [
    dict(name="south accuracy", metric="accuracy", op="<", relative=-0.1, where="region = 'south'"),
    dict(name="accuracy", metric="accuracy", op="<", threshold=0.75),
    dict(name="income missing", check="missing_share", column="income", op=">", threshold=0.1),
    dict(name="any missing", check="missing_share", op=">", threshold=0.1),
    dict(name="new regions", check="new_categories", column="region", op=">", threshold=0.01),
    dict(name="age range", check="out_of_range_share", column="age", op=">", threshold=0.05),
    dict(name="volume", check="volume", op="<", relative=-0.3),
    dict(name="coverage", check="label_coverage", op="<", threshold=0.8),
    dict(name="latency", check="latency_p95", op=">", relative=1.0),
    dict(name="errors", check="error_rate", op=">", threshold=0.05),
    dict(name="income drift", check="drift", column="income"),
    dict(name="dataset drift", check="dataset_drift"),
    dict(name="drift share", check="drift_share", op=">=", threshold=0.3),
    dict(name="estimated accuracy", check="estimated_accuracy", op="<", relative=-0.1),
]


@pytest.fixture(scope="module")
def evaluated(synthetic):
    """Every rule type (and every default) on the clean and on the planted week."""
    _, view, _ = synthetic
    rules = alerts.parse_rules(RULES, "test.toml")
    return {name: alerts.evaluate_alerts(view, sql.parse_window(window), rules=rules, defaults=True)
            for name, window in (("clean", CLEAN), ("planted", PLANTED))}


def _by_name(result) -> dict[str, alerts.Alert]:
    return {a.name: a for a in result.alerts + result.skipped}


def _in(frame: pd.DataFrame, window: str) -> pd.DataFrame:
    parsed = sql.parse_window(window)
    return frame[(frame["timestamp"] >= parsed.start) & (frame["timestamp"] < parsed.end)]


# ---------------------------------------------------------------- validation

def _rule_error(**item) -> str:
    with pytest.raises(ConfigError) as caught:
        alerts.parse_rules([dict(metric="accuracy", op="<", threshold=0.8), item], "mlmon.toml")
    return str(caught.value)


@pytest.mark.parametrize("item, words", [
    (dict(metric="accuracy", op="<", treshold=0.8), ["unknown key 'treshold'", "'threshold'"]),
    (dict(op="<", threshold=0.8), ["metric:", "exactly one of"]),
    (dict(metric="accuracy", check="volume", op="<", threshold=1), ["exactly one of"]),
    (dict(metric="acuracy", op="<", threshold=0.8), ["metric:", "'acuracy'", "'accuracy'"]),
    (dict(check="missing_shares", op=">", threshold=0.1), ["check:", "'missing_share'"]),
    (dict(metric="accuracy", op="=<", threshold=0.8), ["op:", "'=<'"]),
    (dict(metric="accuracy", threshold=0.8), ["op:"]),
    (dict(metric="accuracy", op="<"), ["threshold:", "relative"]),
    (dict(metric="accuracy", op="<", threshold=0.8, relative=-0.1), ["relative:", "exclude"]),
    (dict(check="dataset_drift", op=">", relative=0.1), ["relative:", "threshold"]),
    (dict(metric="accuracy", op="<", threshold=True), ["threshold:", "finite number"]),
    (dict(metric="accuracy", op="<", threshold=float("inf")), ["threshold:", "finite number"]),
    (dict(metric="accuracy", op="<", threshold=0.8, column="age"), ["column:"]),
    (dict(check="drift"), ["column:", "needs"]),
    (dict(metric="accuracy", op="<", threshold=0.8, severity="urgent"), ["severity:", "'urgent'"]),
    (dict(metric="accuracy", op="<", threshold=0.8, where="age >>= 3"), ["where:"]),
    (dict(metric="accuracy", op="<", threshold=0.8, name=""), ["name:"]),
])
def test_invalid_rules_name_the_file_rule_and_key(item, words):
    message = _rule_error(**item)
    assert message.startswith("mlmon.toml: [[alerts]] #2: "), message
    for word in words:
        assert word in message, (word, message)


def test_valid_rules_become_frozen_dataclasses_with_defaults():
    rules = alerts.parse_rules([
        dict(metric="accuracy", op="<", relative=-0.05, where="region = 'south'", severity="high"),
        dict(check="dataset_drift"),
        dict(name="p95", check="latency_p95", op=">", threshold=300),
    ])
    first, drift, latency = rules
    assert (first.index, first.id, first.op, first.relative, first.threshold) == (1, "alerts#1", "<",
                                                                                  -0.05, None)
    assert first.segment == (sql.Condition("region", "==", value="south"),)
    assert first.category == "quality" and first.name == "accuracy for region = south < reference -5%"
    assert (drift.op, drift.threshold, drift.severity, drift.category) == (">=", 1.0, "medium", "drift")
    assert latency.name == "p95" and latency.category == "service"
    with pytest.raises(AttributeError):
        first.op = ">"  # frozen


def test_rules_from_the_config_file_name_it(tmp_path):
    path = write_project(tmp_path / "p", pd.DataFrame({"id": [1], "timestamp": [START]}), None,
                         '[[alerts]]\nmetric = "accuracy"\nop = "<"\nthreshold = 0.8\n'
                         '[[alerts]]\nmetric = "accuracy"\nop = "<"\ntreshold = 0.8\n')
    with pytest.raises(ConfigError, match=r"mlmon\.toml: \[\[alerts\]\] #2: unknown key 'treshold'"):
        alerts.load_rules(load_config(path))


@pytest.mark.parametrize("toml, words", [
    ('[alerts_defaults]\nenabled = "no"\n', ["[alerts_defaults] enabled"]),
    ('[alerts_defaults]\nswitch = true\n', ["'switch'", "[alerts_defaults]"]),
    ('[alerts_webhook]\nurl = "ftp://example.com/x"\n', ["[alerts_webhook] url", "http(s)"]),
    ('[alerts_webhook]\nurl = "file:///etc/passwd"\n', ["[alerts_webhook] url"]),
    ('[alerts_webhook]\nsend = "always"\n', ["[alerts_webhook] url", "required"]),
    ('[alerts_webhook]\nurl = "http://127.0.0.1:9/h"\nsend = "sometimes"\n', ["send", "'sometimes'"]),
])
def test_alert_sections_are_validated(toml, words):
    import tomllib

    with pytest.raises(ConfigError) as caught:
        config_from_dict(tomllib.loads('[source]\npredictions = "p.parquet"\n' + toml),
                         Path("/x/mlmon.toml"))
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_disabling_an_unknown_default_is_an_error():
    import tomllib

    config = config_from_dict(tomllib.loads('[source]\npredictions = "p"\n[alerts_defaults]\n'
                                            'disable = ["volume_dorp"]\n'), Path("/x/mlmon.toml"))
    with pytest.raises(ConfigError, match="disable: unknown default alert 'volume_dorp'"):
        alerts.default_names(config)
    config = config_from_dict(tomllib.loads('[source]\npredictions = "p"\n[alerts_defaults]\n'
                                            'disable = ["volume_drop", "latency_spike"]\n'), None)
    assert "volume_drop" not in alerts.default_names(config)
    assert "quality_drop" in alerts.default_names(config)


@pytest.mark.parametrize("item, words", [
    (dict(check="missing_share", column="incme", op=">", threshold=0.1), ["column:", "'incme'"]),
    (dict(check="new_categories", column="age", op=">", threshold=0.1), ["column:", "numerical"]),
    (dict(metric="mae", op=">", threshold=1), ["metric:", "binary"]),
    (dict(metric="accuracy", op="<", threshold=0.8, where="regio = 'x'"), ["where:", "'regio'"]),
])
def test_rules_that_do_not_fit_the_log_are_config_errors(synthetic, item, words):
    _, view, _ = synthetic
    rules = alerts.parse_rules([item], "mlmon.toml")
    with pytest.raises(ConfigError) as caught:
        alerts.evaluate_alerts(view, sql.parse_window(CLEAN), rules=rules, defaults=False)
    assert "mlmon.toml: [[alerts]] #1" in str(caught.value)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


# ---------------------------------------------------------------- every rule type

@pytest.mark.parametrize("name", [rule["name"] for rule in RULES])
def test_each_rule_fires_on_its_planted_problem_and_not_on_the_clean_week(evaluated, name):
    clean, planted = _by_name(evaluated["clean"]), _by_name(evaluated["planted"])
    assert planted[name].fired, planted[name].message
    if name == "estimated accuracy":  # the clean week is fully labeled: nothing to estimate
        assert clean[name].skipped and "no unlabeled rows" in clean[name].reason
        return
    assert not clean[name].fired and not clean[name].skipped, clean[name].message
    assert planted[name].message and planted[name].rule.startswith("alerts#")


def test_rule_values_match_independent_computations(synthetic, evaluated):
    _, _, frame = synthetic
    planted, reference = _in(frame, PLANTED), _in(frame, REFERENCE)
    alert = _by_name(evaluated["planted"])
    south, south_ref = planted[planted.region == "south"], reference[reference.region == "south"]
    south, south_ref = south.dropna(subset=["target"]), south_ref.dropna(subset=["target"])
    accuracy = alert["south accuracy"]
    assert accuracy.value == pytest.approx(accuracy_score(south.target, south.prediction))
    assert accuracy.reference_value == pytest.approx(
        accuracy_score(south_ref.target, south_ref.prediction))
    assert accuracy.threshold == pytest.approx(accuracy.reference_value * 0.9)
    assert accuracy.segment == "region = south"
    assert alert["income missing"].value == pytest.approx(planted.income.isna().mean())
    assert alert["any missing"].column == "income"
    assert alert["new regions"].value == pytest.approx((planted.region == "mars").mean())
    assert alert["age range"].value == pytest.approx(
        ((planted.age < reference.age.min()) | (planted.age > reference.age.max())).mean())
    assert alert["volume"].value == len(planted)
    assert alert["volume"].reference_value == pytest.approx(len(reference) / 14 * 7)
    assert alert["coverage"].value == pytest.approx(planted.target.notna().mean())
    assert alert["latency"].value == pytest.approx(np.quantile(planted.latency_ms, 0.95))
    assert alert["latency"].reference_value == pytest.approx(np.quantile(reference.latency_ms, 0.95))
    assert alert["errors"].value == pytest.approx((planted.status == "error").mean())
    assert alert["drift share"].value == pytest.approx(4 / 6)


def test_alert_json_carries_rule_value_threshold_and_words(evaluated):
    payload = cli.to_jsonable(evaluated["planted"].to_json())
    json.dumps(payload, allow_nan=False)
    assert payload["fired"] == len([a for a in payload["alerts"] if a["fired"]]) > 10
    entry = next(a for a in payload["alerts"] if a["name"] == "south accuracy")
    assert {"rule", "name", "metric", "segment", "op", "value", "threshold", "reference_value",
            "severity", "message", "fired"} <= set(entry)
    assert entry["rule"] == "alerts#1" and entry["fired"] is True
    assert "below the threshold" in entry["message"]
    assert payload["alerts"][0]["fired"] and payload["alerts"][0]["severity"] == "high"
    assert payload["retrain"]["recommended"] is True and payload["summary"].startswith("Retraining")


def test_defaults_on_the_synthetic_weeks(evaluated):
    clean, planted = evaluated["clean"], evaluated["planted"]
    assert [a.rule for a in clean.fired if a.rule.startswith("default:")] == []
    fired = {a.rule for a in planted.fired}
    assert {"default:quality_drop:accuracy", "default:dataset_drift", "default:feature_drift",
            "default:missing_spike:income", "default:latency_spike", "default:error_rate_spike",
            "default:estimated_quality_drop:accuracy"} <= fired
    assert "default:volume_drop" not in fired  # 60 % of the expected rows is not below half


def test_volume_drop_fires_below_half_the_expected_rows(synthetic):
    _, view, _ = synthetic
    result = alerts.evaluate_alerts(view, sql.parse_window("2025-01-27..2025-02-03"),
                                    rules=(), defaults=["volume_drop"])
    (alert,) = result.alerts
    assert alert.fired and alert.value < alert.threshold == pytest.approx(0.5 * 1400)
    assert result.advice.action == "fix" and "volume" in result.summary


def test_rules_that_cannot_be_computed_are_skipped_not_fired(synthetic):
    _, view, _ = synthetic
    rules = alerts.parse_rules([dict(metric="accuracy", op="<", threshold=0.99),
                                dict(check="missing_share", column="income", op=">", relative=1.0)])
    empty = sql.parse_window("2026-01-01..2026-01-08")
    result = alerts.evaluate_alerts(view, empty, rules=rules, defaults=True)
    assert not [a for a in result.alerts if a.fired and a.rule.startswith("alerts#")]
    skipped = {a.rule: a for a in result.skipped}
    assert skipped["alerts#1"].reason.startswith("not computable")
    assert "alerts#2" in skipped and "no rows" in skipped["alerts#2"].reason
    assert [a.rule for a in result.fired] == ["default:volume_drop"]


def test_feature_drift_corrects_p_value_tests_for_the_number_of_features(synthetic):
    from mlmon_core.drift import ColumnDrift

    _, view, _ = synthetic
    borderline = ColumnDrift("age", "feature", "numerical", "ks", 0.05, statistic=0.2,
                             p_value=0.01, drifted=True)
    strong = ColumnDrift("age", "feature", "numerical", "ks", 0.05, statistic=0.5,
                         p_value=0.001, drifted=True)
    distance = ColumnDrift("age", "feature", "numerical", "wasserstein", 0.1, statistic=0.12,
                           drifted=True)
    assert not alerts._feature_drifted(view, borderline, tested_by_p=10)
    assert alerts._feature_drifted(view, borderline, tested_by_p=1)
    assert alerts._feature_drifted(view, strong, tested_by_p=10)
    assert alerts._feature_drifted(view, distance, tested_by_p=10)


# ---------------------------------------------------------------- the sample data

@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The demo project at 40,000 rows (the planted problems are documented in sample_data/README)."""
    from mlmon_core.demo import generate

    path = generate(tmp_path_factory.mktemp("sample"), rows=40_000)
    return path, open_log(load_config(path))


def _check(sample, window: str, **options):
    return alerts.evaluate_alerts(sample[1], sql.parse_window(window), **options)


def test_defaults_stay_quiet_on_the_clean_window(sample):
    result = _check(sample, "2026-07-01..2026-07-08")
    assert result.fired == [], [a.message for a in result.fired]
    assert result.advice.action == "ok" and not result.advice.recommended
    assert result.summary.startswith("No action needed")
    assert len(result.alerts) >= 7


def test_income_drift_and_quality_drop_fire(sample):
    result = _check(sample, "2026-07-31..2026-08-07")
    fired = {a.rule: a for a in result.fired}
    assert fired["default:feature_drift"].details["drifted_features"] == ["annual_income"]
    assert "default:quality_drop:accuracy" in fired
    assert "default:dataset_drift" not in fired  # one feature of fifteen is not dataset drift
    assert result.advice.recommended and "annual_income" in result.summary


def test_pipeline_bug_fires_the_missing_value_spike(sample):
    result = _check(sample, "2026-08-10..2026-08-17")
    spike = next(a for a in result.fired if a.rule == "default:missing_spike:employment_years")
    assert spike.value > spike.threshold and spike.reference_value < 0.05
    assert "Fix first" in result.summary


def test_estimated_quality_drop_fires_while_labels_are_missing(sample):
    result = _check(sample, "2026-08-21..2026-08-30")
    assert "default:estimated_quality_drop:accuracy" in {a.rule for a in result.fired}
    assert "default:quality_drop" in {a.rule for a in result.skipped}  # no labels at all
    assert result.labeled_rows == 0 and "labels cover 0%" in result.summary


def test_latency_incident_fires_service_alerts_but_not_retraining(sample):
    result = _check(sample, "2026-07-11..2026-07-13")
    assert {a.rule for a in result.fired} == {"default:latency_spike", "default:error_rate_spike"}
    assert result.advice.action == "fix" and not result.advice.recommended


def test_segment_rule_finds_the_degraded_partner_channel(sample):
    rules = alerts.parse_rules([dict(name="partner_api accuracy", metric="accuracy", op="<",
                                     relative=-0.1, where="channel = 'partner_api'")])
    degraded = _check(sample, "2026-07-16..2026-08-15", rules=rules, defaults=False)
    quiet = _check(sample, "2026-07-01..2026-07-08", rules=rules, defaults=False)
    assert degraded.fired and not quiet.fired
    assert degraded.alerts[0].segment == "channel = partner_api"


# ---------------------------------------------------------------- mlmon check

def _main(capsys, *argv) -> tuple[int, dict | None, str]:
    code = cli.main(["check", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if "--json" in argv and out.strip() else None), err


def test_check_exit_codes_on_the_sample(sample, capsys):
    config = str(sample[0])
    code, payload, _ = _main(capsys, "--config", config, "--window", "2026-07-01..2026-07-08",
                             "--json")
    assert code == 0 and payload["fired"] == 0 and payload["webhook"] is None
    assert payload["retrain"] == {"recommended": False, "action": "ok", "reasons": []}
    code, payload, _ = _main(capsys, "--config", config, "--model", "v1.4", "--json")
    assert code == 1 and payload["fired"] >= 1
    assert payload["window"] == {"start": "2026-08-23T00:00:00", "end": "2026-08-30T00:00:00"}
    assert payload["segment_text"] == "model_version = v1.4"


@pytest.fixture
def tiny(tmp_path):
    """A small labeled project; ``tiny(toml)`` writes its mlmon.toml with extra text."""
    rng = np.random.default_rng(1)
    n = 400
    frame = pd.DataFrame({"id": np.arange(n), "timestamp": START + np.arange(n) * np.timedelta64(1, "h"),
                          "age": rng.integers(18, 90, n), "prediction": rng.integers(0, 2, n),
                          "score": rng.random(n), "target": rng.integers(0, 2, n)})

    def make(toml: str = "") -> str:
        return str(write_project(tmp_path / "tiny", frame, None, toml))

    return make


ALWAYS = '[alerts_defaults]\nenabled = false\n[[alerts]]\nmetric = "accuracy"\nop = "<"\nthreshold = 2\n'
NEVER = '[alerts_defaults]\nenabled = false\n[[alerts]]\nmetric = "accuracy"\nop = "<"\nthreshold = -1\n'


@pytest.mark.parametrize("toml, argv, words", [
    ('[[alerts]]\nmetric = "accuracy"\nop = "<"\ntreshold = 0.8\n', [],
     ["[[alerts]] #1: unknown key 'treshold'"]),
    ('[[alerts]]\ncheck = "missing_share"\ncolumn = "nope"\nop = ">"\nthreshold = 0.1\n', [],
     ["[[alerts]] #1", "'nope'"]),
    (NEVER, ["--window", "2025-02-01"], ["--window"]),
    (NEVER, ["--webhook", "gopher://127.0.0.1/x"], ["--webhook", "http(s)"]),
    (NEVER, ["--where", "nosuch = 1"], ["nosuch"]),
])
def test_check_exits_2_on_bad_input(tiny, capsys, toml, argv, words):
    code, _, err = _main(capsys, "--config", tiny(toml), *argv)
    assert code == 2
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err


def test_check_text_output_and_exit_codes(tiny, capsys):
    code, _, _ = _main(capsys, "--config", tiny(NEVER), "--window", "2025-01-01..2025-01-20")
    assert code == 0
    assert cli.main(["check", "--config", tiny(ALWAYS), "--window", "2025-01-01..2025-01-20"]) == 1
    out = capsys.readouterr().out
    assert "1 of 1 alert rules fire" in out and "[medium]" in out


# ---------------------------------------------------------------- webhook (local server only)

class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server.requests.append({"path": self.path, "type": self.headers.get("Content-Type"),
                                "body": body})
        if server.delay:
            time.sleep(server.delay)
        code = server.codes.pop(0) if server.codes else server.code
        try:
            self.send_response(code)
            if 300 <= code < 400:
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def log_message(self, *args):  # silence the test output
        pass


@pytest.fixture
def hook(monkeypatch):
    """A webhook receiver on 127.0.0.1 (never any other address); set .code, .codes, .delay."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads, server.block_on_close = True, False
    server.requests, server.code, server.codes, server.delay = [], 200, [], 0.0
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_receives_the_same_json(tiny, hook, capsys):
    code, payload, err = _main(capsys, "--config", tiny(ALWAYS), "--window", "2025-01-01..2025-01-20",
                               "--webhook", hook.url, "--json")
    assert code == 1 and err == ""
    assert payload["webhook"]["status"] == 200 and payload["webhook"]["attempts"] == 1
    assert payload["webhook"]["sent"] is True
    (request,) = hook.requests
    assert request["path"] == "/hook" and request["type"] == "application/json"
    posted = json.loads(request["body"])
    assert posted == {k: v for k, v in payload.items() if k != "webhook"}


def test_webhook_failure_is_retried_recorded_and_keeps_the_exit_code(tiny, hook, capsys):
    hook.code = 500
    code, payload, err = _main(capsys, "--config", tiny(ALWAYS), "--window", "2025-01-01..2025-01-20",
                               "--webhook", hook.url, "--json")
    assert code == 1  # still: an alert fired
    assert len(hook.requests) == 3
    assert payload["webhook"]["attempts"] == 3 and payload["webhook"]["sent"] is False
    assert payload["webhook"]["status"] == 500 and "HTTP 500" in payload["webhook"]["error"]
    assert "webhook" in err and "failed after 3 attempt(s)" in err
    assert payload["alerts"][0]["fired"]  # the result is still printed

    hook.requests.clear()
    code, payload, _ = _main(capsys, "--config", tiny(NEVER), "--window", "2025-01-01..2025-01-20",
                             "--webhook", hook.url, "--webhook-send", "always", "--json")
    assert code == 0 and len(hook.requests) == 3 and payload["webhook"]["sent"] is False


def test_webhook_recovers_after_a_transient_error(hook):
    hook.codes = [503, 200]
    outcome = alerts.send_webhook(hook.url, {"fired": 1}, backoff=0.01)
    assert outcome["sent"] and outcome["attempts"] == 2 and outcome["status"] == 200


def test_webhook_is_not_sent_when_nothing_fires_by_default(tiny, hook, capsys):
    code, payload, _ = _main(capsys, "--config", tiny(NEVER + f'[alerts_webhook]\nurl = "{hook.url}"\n'),
                             "--window", "2025-01-01..2025-01-20", "--json")
    assert code == 0 and hook.requests == [] and payload["webhook"]["sent"] is False
    assert payload["webhook"]["url"] == alerts.redacted(hook.url) == hook.url.replace("/hook", "/…")


def test_webhook_client_errors_and_redirects_are_not_retried(hook):
    hook.code = 404
    outcome = alerts.send_webhook(hook.url, {"x": 1}, backoff=0.01)
    assert outcome["attempts"] == 1 and outcome["status"] == 404 and not outcome["sent"]
    hook.code, hook.requests = 302, []
    outcome = alerts.send_webhook(hook.url, {"x": 1}, backoff=0.01)
    assert outcome["attempts"] == 1 and outcome["status"] == 302 and len(hook.requests) == 1


def test_webhook_urls_are_redacted_in_the_output():
    assert alerts.redacted("https://user:pw@hooks.example.com/services/T0/B0/secret?k=1") == \
        "https://hooks.example.com/…"
    assert alerts.redacted("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert alerts.redacted("http://[::1]:9/x") == "http://[::1]:9/…"


def test_webhook_timeouts_are_bounded(hook):
    hook.delay = 3.0
    started = time.monotonic()
    outcome = alerts.send_webhook(hook.url, {"x": 1}, timeout=0.3, attempts=2, backoff=0.05)
    elapsed = time.monotonic() - started
    assert not outcome["sent"] and outcome["attempts"] == 2 and "timed out" in outcome["error"]
    assert elapsed < 1.5
    started = time.monotonic()
    outcome = alerts.send_webhook(hook.url, {"x": 1}, timeout=5.0, attempts=3, budget=0.5)
    assert time.monotonic() - started < 1.2 and not outcome["sent"]


def test_webhook_to_a_closed_port_fails_quietly(hook):
    port = hook.server_address[1]
    hook.shutdown()
    hook.server_close()
    outcome = alerts.send_webhook(f"http://127.0.0.1:{port}/hook", {"x": 1}, backoff=0.01)
    assert outcome["attempts"] == 3 and not outcome["sent"] and outcome["status"] is None


def test_quality_drop_of_a_regression_model_watches_errors_going_up(make_log):
    rng = np.random.default_rng(4)
    n = 3000
    ts = START + (np.arange(n) * 14 * 86400 // n).astype("timedelta64[s]")
    target = rng.normal(100, 20, n)
    later = ts >= np.datetime64("2025-01-11")
    prediction = target + rng.normal(0, 5, n) + np.where(later, rng.normal(0, 15, n), 0)
    view = make_log(pd.DataFrame({"id": np.arange(n), "timestamp": ts, "x": rng.random(n),
                                  "prediction": prediction, "target": target}),
                    toml='[model]\ntask = "regression"\n[reference]\nstart = "2025-01-01"\n'
                         'end = "2025-01-08"\n')
    result = alerts.evaluate_alerts(view, sql.parse_window("2025-01-11..2025-01-15"),
                                    defaults=["quality_drop", "estimated_quality_drop"])
    fired = {a.rule: a for a in result.fired}
    assert set(fired) == {"default:quality_drop:mae", "default:quality_drop:rmse"}
    mae = fired["default:quality_drop:mae"]
    assert mae.op == ">" and mae.value > mae.threshold and "rose" in mae.summary
    assert mae.value == pytest.approx(np.abs(prediction[later] - target[later]).mean())
    assert [a.check for a in result.skipped] == ["estimated_quality_drop"]
    quiet = alerts.evaluate_alerts(view, sql.parse_window("2025-01-08..2025-01-11"),
                                   defaults=["quality_drop"])
    assert not quiet.fired
