"""One place for what differs between the Airflow lines this provider supports (3.1, 3.2, 3.3).

Modelled on the official providers' ``version_compat.py`` and on
``apache-airflow-providers-common-compat``'s ``sdk.py`` (without depending on it): version flags,
plus every Airflow name whose home moved between 3.1 and 3.3, imported from its newest home first::

    from airflow_provider_stablecog.compat import AirflowFailException, conf, task_state_store

=====================================  ====================================  ==========================
name                                   Airflow 3.2 and 3.3                   Airflow 3.1
=====================================  ====================================  ==========================
``conf``                               ``airflow.sdk.conf``                  ``airflow.configuration``
``AirflowException`` & co. (below)     ``airflow.sdk.exceptions``            ``airflow.exceptions``
``context["task_state_store"]``        3.3 only                              —
=====================================  ====================================  ==========================

Names are resolved lazily (PEP 562 ``__getattr__``), so importing this module costs nothing more
than the version check; ``conf`` and the exceptions are imported on first use.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

__all__ = [
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "AirflowTaskTimeout",
    "TaskDeferred",
    "conf",
    "drop_unsupported_arguments",
    "get_base_airflow_version_tuple",
    "task_identity",
    "task_state_store",
]


def get_base_airflow_version_tuple() -> tuple[int, int, int]:
    """The running Airflow's ``(major, minor, micro)``, pre-release and local parts dropped."""
    from airflow import __version__
    from packaging.version import Version

    version = Version(__version__)
    return version.major, version.minor, version.micro


AIRFLOW_V_3_1_PLUS: bool = get_base_airflow_version_tuple() >= (3, 1, 0)
AIRFLOW_V_3_2_PLUS: bool = get_base_airflow_version_tuple() >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS: bool = get_base_airflow_version_tuple() >= (3, 3, 0)

# name -> modules to try, newest home first. Airflow 3.1's task SDK has no ``conf`` and its
# ``airflow.sdk.exceptions`` has only AirflowException; 3.2 moved the rest there (the old names in
# ``airflow.exceptions`` still work but warn).
_IMPORT_MAP: dict[str, tuple[str, ...]] = {
    "conf": ("airflow.sdk", "airflow.configuration"),
    "AirflowException": ("airflow.sdk.exceptions", "airflow.exceptions"),
    "AirflowFailException": ("airflow.sdk.exceptions", "airflow.exceptions"),
    "AirflowSensorTimeout": ("airflow.sdk.exceptions", "airflow.exceptions"),
    "AirflowSkipException": ("airflow.sdk.exceptions", "airflow.exceptions"),
    "AirflowTaskTimeout": ("airflow.sdk.exceptions", "airflow.exceptions"),
    "TaskDeferred": ("airflow.sdk.exceptions", "airflow.exceptions"),
}

if TYPE_CHECKING:  # type checkers see the newest homes (the development line, 3.3)
    from airflow.sdk import conf as conf
    from airflow.sdk.exceptions import (
        AirflowException as AirflowException,
        AirflowFailException as AirflowFailException,
        AirflowSensorTimeout as AirflowSensorTimeout,
        AirflowSkipException as AirflowSkipException,
        AirflowTaskTimeout as AirflowTaskTimeout,
        TaskDeferred as TaskDeferred,
    )


def __getattr__(name: str) -> Any:
    modules = _IMPORT_MAP.get(name)
    if modules is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module_name in modules:
        try:
            value = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
        globals()[name] = value  # resolved once per process
        return value
    raise ImportError(f"cannot import {name!r} from any of {', '.join(modules)} (Airflow too old?)")


def __dir__() -> list[str]:
    return sorted(__all__)


NO_STATE_STORE_MESSAGE = (
    "%s: a retried try resumes only from what is recorded at the destination, so nothing recorded "
    "there is paid for twice; without a destination, a retry cannot know what an earlier try was "
    "answered and may pay for those images again"
)


def task_state_store(context: Mapping[str, Any], log: logging.Logger | Any) -> Any | None:
    """The task instance's state store (``context["task_state_store"]``, Airflow 3.3+), or ``None``.

    Where it is missing (Airflow 3.1 and 3.2) this says so in one log line, with what that means
    for resuming, and returns ``None``: the caller then checkpoints to the destination only.
    """
    store = context.get("task_state_store")
    if store is not None:
        return store
    if AIRFLOW_V_3_3_PLUS:
        lacking = "This task's context has no task state store"
    else:
        from airflow import __version__

        lacking = f"Airflow {__version__} has no task state store (it came in Airflow 3.3)"
    log.warning(NO_STATE_STORE_MESSAGE, lacking)
    return None


#: BaseOperator arguments that came in a later Airflow line than 3.1: dropped (a no-op) on lines
#: that lack them, so one DAG file runs on every supported line.
NEWER_OPERATOR_ARGUMENTS: dict[str, bool] = {"retry_policy": AIRFLOW_V_3_3_PLUS}


def drop_unsupported_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the BaseOperator arguments this Airflow line does not know.

    ``retry_policy`` (rule-based retries, Airflow 3.3) is dropped on 3.1 and 3.2, where the task
    keeps Airflow's plain ``retries``; other arguments are passed through untouched.
    """
    for name, supported in NEWER_OPERATOR_ARGUMENTS.items():
        if not supported and name in kwargs:
            kwargs = {k: v for k, v in kwargs.items() if k != name}
            logging.getLogger(__name__).debug("%s needs a newer Airflow: ignored", name)
    return kwargs


def task_identity(context: Mapping[str, Any]) -> str | None:
    """This task instance across its tries: ``dag_id/run_id/task_id`` (+ ``/map_index`` if mapped).

    What a budget (``max_credits``) is counted against; ``None`` outside a task (no ``ti``).
    """
    ti = context.get("ti")
    if ti is None:
        return None
    parts = [str(getattr(ti, name, "")) for name in ("dag_id", "run_id", "task_id")]
    map_index = getattr(ti, "map_index", -1)
    if isinstance(map_index, int) and map_index >= 0:
        parts.append(str(map_index))
    return "/".join(parts)
