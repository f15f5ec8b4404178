"""An embedded, faithful emulator of the Stablecog image API (like moto / stripe-mock).

Importing this package is cheap: FastAPI, Pillow and friends load only when a name
that needs them is used.

    from airflow_provider_stablecog.emulator import run_emulator

    with run_emulator(latency=0.1) as emulator:
        print(emulator.base_url, emulator.api_key)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_stablecog.emulator.app import create_app
    from airflow_provider_stablecog.emulator.config import EmulatorConfig
    from airflow_provider_stablecog.emulator.imaging import write_sample_images
    from airflow_provider_stablecog.emulator.state import EmulatorState
    from airflow_provider_stablecog.emulator.testing import RunningEmulator, run_emulator

_EXPORTS = {
    "create_app": "airflow_provider_stablecog.emulator.app",
    "EmulatorConfig": "airflow_provider_stablecog.emulator.config",
    "EmulatorState": "airflow_provider_stablecog.emulator.state",
    "write_sample_images": "airflow_provider_stablecog.emulator.imaging",
    "RunningEmulator": "airflow_provider_stablecog.emulator.testing",
    "run_emulator": "airflow_provider_stablecog.emulator.testing",
}

__all__ = [
    "EmulatorConfig",
    "EmulatorState",
    "RunningEmulator",
    "create_app",
    "run_emulator",
    "write_sample_images",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
