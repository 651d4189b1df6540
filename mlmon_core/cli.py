"""The ``mlmon`` command: arguments in, core calls, JSON and exit codes out.

Exit codes: 0 ok, 1 an alert fired (``check``), 2 bad input or configuration (message on stderr).
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

EXIT_OK, EXIT_ALERT, EXIT_BAD_INPUT = 0, 1, 2
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


_COMMANDS: list[Callable] = [_add_demo, _add_app, _add_ingest, _add_schema]


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
    _print(result, getattr(args, "json", False))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
