"""airflow_provider_stablecog.compat: the names that moved between Airflow 3.1, 3.2 and 3.3."""

from __future__ import annotations

import importlib
import logging

import pytest

import airflow_provider_stablecog.compat as compat

EXCEPTIONS = (
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "AirflowTaskTimeout",
    "TaskDeferred",
)


def test_version_flags_match_the_running_airflow():
    from airflow import __version__
    from packaging.version import Version

    running = Version(__version__).release[:3]
    assert compat.get_base_airflow_version_tuple() == tuple(running) + (0,) * (3 - len(running))
    assert compat.AIRFLOW_V_3_1_PLUS  # the oldest supported line
    assert compat.AIRFLOW_V_3_2_PLUS == (running >= (3, 2))
    assert compat.AIRFLOW_V_3_3_PLUS == (running >= (3, 3))


@pytest.mark.parametrize("name", EXCEPTIONS)
def test_exceptions_are_the_ones_this_airflow_raises_and_handles(name):
    """From ``airflow.sdk.exceptions`` where it has them (3.2+), else ``airflow.exceptions`` (3.1)."""
    exc = getattr(compat, name)
    sdk = importlib.import_module("airflow.sdk.exceptions")
    if compat.AIRFLOW_V_3_2_PLUS or hasattr(sdk, name):
        assert exc is getattr(sdk, name)
    else:
        assert exc is getattr(importlib.import_module("airflow.exceptions"), name)
    assert issubclass(exc, BaseException)
    if name in ("AirflowFailException", "AirflowSensorTimeout", "AirflowSkipException"):
        assert issubclass(exc, compat.AirflowException)


def test_conf_reads_airflow_config():
    assert isinstance(compat.conf.getboolean("operators", "default_deferrable", fallback=False), bool)
    if compat.AIRFLOW_V_3_2_PLUS:
        from airflow.sdk import conf

        assert compat.conf is conf


def test_from_import_and_unknown_names():
    from airflow_provider_stablecog.compat import AirflowFailException, conf  # noqa: F401

    with pytest.raises(AttributeError):
        compat.NoSuchName  # noqa: B018
    assert set(compat.__all__) <= set(dir(compat))


class _Store:
    def get(self, key, default=None):
        return default

    def set(self, key, value):
        pass


def test_task_state_store_is_returned_silently(caplog):
    store = _Store()
    with caplog.at_level(logging.INFO):
        assert compat.task_state_store({"task_state_store": store}, logging.getLogger("t")) is store
    assert not caplog.records


def test_missing_task_state_store_is_said_once(caplog):
    with caplog.at_level(logging.INFO):
        assert compat.task_state_store({}, logging.getLogger("t")) is None
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "no task state store" in message
    assert "recorded at the destination" in message and "paid for twice" in message
    if not compat.AIRFLOW_V_3_3_PLUS:
        assert "Airflow 3.3" in message


def test_retry_policy_is_accepted_on_every_line():
    """One DAG file for 3.1-3.3: the ready policy on 3.3, a no-op (argument dropped) before."""
    from airflow_provider_stablecog.operators.upscale import UpscaleOperator
    from airflow_provider_stablecog.retry_policy import retry_policy_kwargs, stablecog_retry_policy
    from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

    op = UpscaleOperator(task_id="u", inputs=["x"], retries=2, retry_policy=stablecog_retry_policy())
    sensor = StablecogCreditsSensor(task_id="s", min_credits=1, retry_policy=stablecog_retry_policy())
    for task in (op, sensor):
        assert (getattr(task, "retry_policy", None) is not None) == compat.AIRFLOW_V_3_3_PLUS
    assert bool(retry_policy_kwargs()) == compat.AIRFLOW_V_3_3_PLUS


def test_task_identity_names_the_task_instance_across_tries():
    class TI:
        dag_id, run_id, task_id, map_index = "d", "manual__1", "t", -1

    assert compat.task_identity({"ti": TI()}) == "d/manual__1/t"
    TI.map_index = 3
    assert compat.task_identity({"ti": TI()}) == "d/manual__1/t/3"
    assert compat.task_identity({}) is None
