"""pytest fixtures for the Stablecog emulator (a real subprocess per fixture scope).

Use in a conftest.py::

    from airflow_provider_stablecog.emulator.pytest_plugin import (  # noqa: F401
        pytest_configure, stablecog_emulator, stablecog_emulator_module,
    )

or register this module as a plugin (``-p airflow_provider_stablecog.emulator.pytest_plugin``).
Options come from the closest ``@pytest.mark.stablecog_emulator(latency=0.1, ...)`` marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_stablecog.emulator.testing import RunningEmulator, run_emulator

MARKER = "stablecog_emulator"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(**options): options of the stablecog_emulator fixtures")


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker(MARKER)
    options = dict(marker.kwargs) if marker else {}
    if getattr(request, "param", None):
        options.update(request.param)
    return options


@pytest.fixture
def stablecog_emulator(request: pytest.FixtureRequest) -> Iterator[RunningEmulator]:
    """A fresh emulator process for one test."""
    with run_emulator(**_options(request)) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def stablecog_emulator_module(request: pytest.FixtureRequest) -> Iterator[RunningEmulator]:
    """One emulator process shared by a test module (reset its state with ``emulator.reset()``)."""
    with run_emulator(**_options(request)) as emulator:
        yield emulator
