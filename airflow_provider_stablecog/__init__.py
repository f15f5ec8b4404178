"""Apache Airflow provider for the Stablecog image API.

Roles live in their own modules, imported where used (DAG files import them at every parse)::

    airflow_provider_stablecog.hooks.stablecog       StablecogHook
    airflow_provider_stablecog.operators.upscale     UpscaleOperator
    airflow_provider_stablecog.sensors.credits       StablecogCreditsSensor
    airflow_provider_stablecog.triggers.credits      StablecogCreditsTrigger
    airflow_provider_stablecog.client                StablecogClient (no Airflow import)
    airflow_provider_stablecog.emulator              the local Stablecog emulator

One wheel supports Airflow 3.1, 3.2 and 3.3: what differs between those lines (where ``conf`` and the
task exceptions live, the 3.3-only task state store) is imported through
``airflow_provider_stablecog.compat``.
"""

from __future__ import annotations

__version__ = "0.1.0"
