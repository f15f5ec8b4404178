from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import airflow
import jsonschema

from airflow_provider_stablecog.get_provider_info import get_provider_info


def test_package_name_is_the_distribution_name():
    info = get_provider_info()
    assert info["package-name"] == distribution("airflow-provider-stablecog").metadata["Name"]
    assert info["versions"][0] == distribution("airflow-provider-stablecog").version


def test_entry_point_is_registered():
    eps = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_stablecog")
    ]
    assert len(eps) == 1 and eps[0].load() is get_provider_info


def test_provider_info_matches_airflows_schema():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_connection_form_declared():
    (conn,) = get_provider_info()["connection-types"]
    assert conn["connection-type"] == "stablecog"
    assert conn["hook-class-name"] == "airflow_provider_stablecog.hooks.stablecog.StablecogHook"
    assert {
        "timeout",
        "connect_timeout",
        "plan_concurrency",
        "rate_limit",
        "max_retries",
        "retry_backoff",
    } <= set(conn["conn-fields"])
    behaviour = conn["ui-field-behaviour"]
    assert behaviour["relabeling"]["password"] == "API key"
    assert behaviour["placeholders"]["host"] == "https://api.stablecog.com"
    assert {"login", "schema", "port"} <= set(behaviour["hidden-fields"])


def test_connection_form_does_not_freeze_defaults():
    """A default in a conn-field schema pre-fills the form, and saving stores it in Extra: none."""
    (conn,) = get_provider_info()["connection-types"]
    for name, field in conn["conn-fields"].items():
        assert "default" not in field["schema"], name
        assert "null" in field["schema"]["type"], name  # empty is allowed and means the default
        assert field.get("description"), f"{name} has no help text"
        assert field.get("label"), name


def test_connection_form_placeholders_are_the_hooks_defaults(monkeypatch):
    """Each empty extra field shows the value the hook uses when it is empty."""
    from airflow_provider_stablecog.hooks.stablecog import StablecogHook

    (conn,) = get_provider_info()["connection-types"]
    placeholders = conn["ui-field-behaviour"]["placeholders"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_STABLECOG_DEFAULT", json.dumps({"conn_type": "stablecog", "password": "sc-x"})
    )
    settings = StablecogHook().settings
    used = {
        "timeout": settings.read_timeout,
        "connect_timeout": settings.connect_timeout,
        "plan_concurrency": settings.plan_concurrency,
        "rate_limit": settings.rate_limit,
        "max_retries": settings.max_retries,
        "retry_backoff": settings.retry_backoff,
    }
    assert set(used) == set(conn["conn-fields"])
    for name, value in used.items():
        assert float(placeholders[name]) == value, name
        assert f"Empty: {placeholders[name]}" in conn["conn-fields"][name]["description"], name


def test_airflow_cli_lists_the_provider_and_its_hook(tmp_path):
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    providers = subprocess.run(
        [airflow_bin, "providers", "list"], env=env, capture_output=True, text=True, check=True
    )
    assert "airflow-provider-stablecog" in providers.stdout
    hooks = subprocess.run(
        [airflow_bin, "providers", "hooks"], env=env, capture_output=True, text=True, check=True
    )
    line = next(line for line in hooks.stdout.splitlines() if line.startswith("stablecog "))
    assert "StablecogHook" in line and "stablecog_conn_id" in line
