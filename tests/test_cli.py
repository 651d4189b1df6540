"""The mlmon command: exit codes, JSON on stdout, messages (never tracebacks) on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlmon_core import cli

MLMON = Path(sys.executable).parent / "mlmon"


def log_frame(n: int = 48) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({
        "id": np.arange(n),
        "timestamp": pd.date_range("2024-02-01", periods=n, freq="6h"),
        "age": rng.integers(18, 90, n),
        "state": rng.choice(["CA", "NY"], n),
        "prediction": rng.integers(0, 2, n),
        "score": rng.random(n),
        "target": rng.integers(0, 2, n),
    })


@pytest.fixture
def config(tmp_path) -> Path:
    """A project with a small labeled log."""
    folder = tmp_path / "project"
    folder.mkdir()
    log_frame().to_parquet(folder / "predictions.parquet", index=False)
    path = folder / "mlmon.toml"
    path.write_text('[source]\npredictions = "predictions.parquet"\n')
    return path


def _add_probe(sub) -> None:
    """A test-only command built from the shared helpers every analysis command uses."""
    parser = sub.add_parser("probe", help="count rows in a window and segment (tests only)")
    cli._add_analysis_options(parser)
    parser.set_defaults(handler=_cmd_probe)


def _cmd_probe(args) -> cli.Result:
    view = cli.open_view(args)
    segment = cli.segment_of(args, view)
    window = cli.window_of(view, args.window)
    rows = view.count(window, segment)
    return cli.Result({"rows": rows, "window": window}, f"{rows} rows")


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setattr(cli, "_COMMANDS", [*cli._COMMANDS, _add_probe])


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- success

def test_schema_json(config, capsys):
    code, out, err = run(["schema", "--config", str(config), "--json"], capsys)
    assert code == 0 and err == ""
    payload = json.loads(out)
    assert {"rows", "columns", "roles"} <= set(payload)
    assert payload["rows"] == 48 and payload["labeled_rows"] == 48
    assert payload["roles"]["timestamp"] == "timestamp"
    assert [c["name"] for c in payload["columns"]][:2] == ["id", "timestamp"]


def test_schema_text(config, capsys):
    code, out, _ = run(["schema", "--config", str(config.parent)], capsys)
    assert code == 0
    assert out.startswith("48 rows (48 labeled), task binary")
    assert "state" in out and "categorical" in out


def test_window_and_where_select_the_rows(config, probe, capsys):
    frame = log_frame()
    code, out, _ = run(["probe", "--config", str(config), "--json", "--window",
                        "2024-02-03..2024-02-08", "--where", "age >= 50", "--where",
                        "state in ('NY')"], capsys)
    assert code == 0
    expected = ((frame["timestamp"] >= "2024-02-03") & (frame["timestamp"] < "2024-02-08")
                & (frame["age"] >= 50) & (frame["state"] == "NY")).sum()
    payload = json.loads(out)
    assert payload["rows"] == expected
    assert payload["window"] == {"start": "2024-02-03T00:00:00", "end": "2024-02-08T00:00:00"}


def test_default_window_is_the_last_seven_days(config, probe, capsys):
    frame = log_frame()
    code, out, _ = run(["probe", "--config", str(config), "--json"], capsys)
    assert code == 0
    last_day = frame["timestamp"].max().normalize() + pd.Timedelta(days=1)
    expected = (frame["timestamp"] >= last_day - pd.Timedelta(days=7)).sum()
    assert json.loads(out)["rows"] == expected


# ---------------------------------------------------------------- bad input: exit 2

@pytest.fixture
def bad_toml(tmp_path) -> Path:
    path = tmp_path / "bad" / "mlmon.toml"
    path.parent.mkdir()
    path.write_text('[source]\npredictions = "p.parquet"\n[model\n')
    return path


BAD_INPUT = {
    "missing config": (["schema", "--config", "{missing}"], "config file not found"),
    "bad toml": (["schema", "--config", "{bad_toml}"], "not valid TOML"),
    "unknown key": (["schema", "--config", "{unknown_key}"], "unknown key 'colour'"),
    "bad where": (["probe", "--config", "{config}", "--where", "age >>= 3"], "expected a value"),
    "unterminated quote": (["probe", "--config", "{config}", "--where", "state == 'NY"],
                           "cannot read filter"),
    "where with or": (["probe", "--config", "{config}", "--where", "age > 3 or age < 1"],
                      "expected 'and'"),
    "unknown column": (["probe", "--config", "{config}", "--where", "height > 3"],
                       "unknown column 'height'"),
    "hostile column": (["probe", "--config", "{config}", "--where", "\"x'; DROP TABLE log; --\" > 3"],
                       "unknown column"),
    "bad number": (["probe", "--config", "{config}", "--where", "age > 'old'"],
                   "column 'age' is numeric"),
    "bad window": (["probe", "--config", "{config}", "--window", "last week"], "expected START..END"),
    "bad window date": (["probe", "--config", "{config}", "--window", "2024-02-30..2024-03-01"],
                        "is not a date"),
    "reversed window": (["probe", "--config", "{config}", "--window", "2024-03-01..2024-02-01"],
                        "the start must be before the end"),
    "no model column": (["probe", "--config", "{config}", "--model", "v2"], "--model needs a model column"),
    "missing data": (["schema", "--config", "{no_data}"], "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_a_message(case, config, bad_toml, tmp_path, probe, capsys):
    unknown_key = tmp_path / "unknown" / "mlmon.toml"
    unknown_key.parent.mkdir()
    unknown_key.write_text('[source]\npredictions = "p.parquet"\ncolour = "red"\n')
    no_data = tmp_path / "nodata" / "mlmon.toml"
    no_data.parent.mkdir()
    no_data.write_text('[source]\npredictions = "p.parquet"\n')
    paths = {"config": config, "bad_toml": bad_toml, "missing": tmp_path / "none.toml",
             "unknown_key": unknown_key, "no_data": no_data}
    argv, message = BAD_INPUT[case]
    code, out, err = run([arg.format(**paths) for arg in argv], capsys)
    assert code == 2
    assert out == ""
    assert message in err and err.startswith(f"mlmon {argv[0]}: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [[], ["nonsense"], ["schema"], ["schema", "--config"],
                                  ["ingest", "--config", "x.toml"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "mlmon: error:" in err and "Traceback" not in err


def test_help_for_every_command_exits_0(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"demo", "app", "ingest", "ingest-labels", "schema"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exited:
            cli.main([name, "--help"])
        assert exited.value.code == 0, name
        assert "usage: mlmon " + name in capsys.readouterr().out


def test_to_jsonable_makes_plain_json():
    from datetime import date, datetime

    value = {"a": (1, np.int64(2)), "b": float("nan"), "c": np.array([0.5, np.inf]),
             "d": datetime(2024, 1, 2, 3), "e": date(2024, 1, 2), "f": Path("/x"), 3: {np.float32(1)}}
    assert json.loads(json.dumps(cli.to_jsonable(value))) == {
        "a": [1, 2], "b": None, "c": [0.5, None], "d": "2024-01-02T03:00:00", "e": "2024-01-02",
        "f": "/x", "3": [1.0]}


# ---------------------------------------------------------------- the installed command

def test_installed_command_schema_json(config):
    result = subprocess.run([str(MLMON), "schema", "--config", str(config), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["rows"] == 48 and "columns" in payload and "roles" in payload


@pytest.mark.parametrize(("argv", "message"), [
    (["schema", "--config", "{missing}"], "config file not found"),
    (["schema", "--config", "{bad_toml}"], "not valid TOML"),
    (["ingest", "{missing}", "--config", "{config}"], "ingest needs [source] predictions to name a "
                                                     "directory"),
    (["schema"], "the following arguments are required: --config"),
])
def test_installed_command_bad_input(argv, message, config, bad_toml, tmp_path):
    paths = {"config": config, "bad_toml": bad_toml, "missing": tmp_path / "none.toml"}
    result = subprocess.run([str(MLMON), *[a.format(**paths) for a in argv]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_installed_command_help():
    result = subprocess.run([str(MLMON), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ingest-labels" in result.stdout
