"""Test helpers: a throwaway Airflow installation (:mod:`.airflow_sandbox`).

Nothing here is imported by the provider itself; it is for this project's tests, demos and
for users who want to run their DAGs end to end against the emulator.
"""

from __future__ import annotations

from airflow_provider_stablecog.testing.airflow_sandbox import (
    AirflowSandbox,
    DagTestResult,
    SandboxError,
    TaskInstanceInfo,
)

__all__ = ["AirflowSandbox", "DagTestResult", "SandboxError", "TaskInstanceInfo"]
