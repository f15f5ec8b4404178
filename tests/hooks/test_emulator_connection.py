"""The connection the emulator prints is one the hook reads as printed (issue #13)."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import urllib.request

import pytest

from airflow_provider_stablecog.emulator.cli import connection_lines
from airflow_provider_stablecog.emulator.testing import PACKAGE_ROOT, _child_env, emulator_command
from airflow_provider_stablecog.hooks.stablecog import StablecogHook

KEY = "sc-" + "ab" * 32
URL = "http://127.0.0.1:8765"


def export_value(lines: list[str]) -> str:
    (line,) = [line for line in lines if line.strip().startswith("export AIRFLOW_CONN_STABLECOG_DEFAULT=")]
    (assignment,) = shlex.split(line.strip())[1:]
    name, _, value = assignment.partition("=")
    assert name == "AIRFLOW_CONN_STABLECOG_DEFAULT"
    return value


def test_printed_env_line_is_read_by_the_hook(monkeypatch):
    value = export_value(connection_lines(URL, KEY, 4))
    assert json.loads(value) == {
        "conn_type": "stablecog",
        "host": URL,
        "password": KEY,
        "extra": {"plan_concurrency": 4},
    }
    monkeypatch.setenv("AIRFLOW_CONN_STABLECOG_DEFAULT", value)
    settings = StablecogHook().settings
    assert (settings.base_url, settings.api_key, settings.plan_concurrency) == (URL, KEY, 4)


def test_printed_cli_command_parses_and_gives_the_same_connection(monkeypatch):
    from airflow.cli.cli_parser import get_parser
    from airflow.models.connection import Connection

    (line,) = [line for line in connection_lines(URL, KEY, 2) if "airflow connections add" in line]
    argv = shlex.split(line)
    assert argv[:4] == ["airflow", "connections", "add", "stablecog_default"]
    args = get_parser().parse_args(argv[1:])
    conn = Connection(
        conn_id=args.conn_id,
        conn_type=args.conn_type,
        host=args.conn_host,
        password=args.conn_password,
        extra=args.conn_extra,
    )
    assert conn.host == URL  # the form shows the whole base URL
    monkeypatch.setenv("AIRFLOW_CONN_STABLECOG_DEFAULT", conn.get_uri())
    settings = StablecogHook().settings
    assert (settings.base_url, settings.api_key, settings.plan_concurrency) == (URL, KEY, 2)


def test_unlimited_plan_prints_no_plan_extra():
    assert "extra" not in json.loads(export_value(connection_lines(URL, KEY, 0)))


@pytest.mark.timeout(60)
def test_cli_prints_the_connection_and_access_log():
    """A real `stablecog-emulator --access-log`: stdout keeps its one ready line; stderr carries
    the connection to set and, at the default log level, one access line per request."""
    process = subprocess.Popen(
        emulator_command(port=0, latency=0.01, access_log=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=str(PACKAGE_ROOT),
        env=_child_env(None),
    )
    try:
        ready = process.stdout.readline().strip()
        assert ready.startswith("Stablecog emulator ready at http://127.0.0.1:"), ready
        url = ready.split(" ready at ")[1].split(" ")[0]
        with urllib.request.urlopen(f"{url}/v1/health", timeout=10) as answer:
            assert answer.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        out, err = process.stdout.read(), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert out == ""  # nothing after the ready line on stdout
    value = json.loads(export_value(err.splitlines()))
    assert value["host"] == url
    assert value["extra"] == {"plan_concurrency": 4}  # the emulator's default plan
    assert f"airflow connections add stablecog_default --conn-type stablecog --conn-host {url}" in err
    assert '"GET /v1/health HTTP/1.1" 200' in err
