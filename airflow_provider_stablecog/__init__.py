"""Apache Airflow provider for the Stablecog image API.

Roles live in their own modules, imported where used (DAG files import them at every parse)::

    airflow_provider_stablecog.hooks.stablecog       StablecogHook
    airflow_provider_stablecog.operators.upscale     UpscaleOperator
    airflow_provider_stablecog.sensors.credits       StablecogCreditsSensor
    airflow_provider_stablecog.triggers.credits      StablecogCreditsTrigger
    airflow_provider_stablecog.client                StablecogClient (no Airflow import)
    airflow_provider_stablecog.emulator              the local Stablecog emulator
"""

from __future__ import annotations

__version__ = "0.1.0"
