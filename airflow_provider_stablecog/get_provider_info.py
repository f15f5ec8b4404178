"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

# What StablecogHook uses for an empty extra, shown in the form. Literal on purpose: Airflow calls
# get_provider_info while importing airflow.sdk, so this module must not import the client.
# tests/test_provider_info.py checks that they match the hook's real defaults.
CONNECTION_DEFAULTS: dict[str, float] = {
    "timeout": 600,
    "connect_timeout": 10,
    "plan_concurrency": 1,
    "rate_limit": 8,
    "max_retries": 5,
    "retry_backoff": 1,
}


def get_provider_info() -> dict[str, Any]:
    from airflow_provider_stablecog import __version__

    empty = {key: f"{value:g}" for key, value in CONNECTION_DEFAULTS.items()}

    return {
        "package-name": "airflow-provider-stablecog",
        "name": "Stablecog",
        "description": "Generate and upscale images with the Stablecog API: hook, StablecogGenerateOperator, UpscaleOperator, credits sensor.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Stablecog",
                "external-doc-url": "https://stablecog.com/docs/v1/api-reference",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Stablecog",
                "python-modules": ["airflow_provider_stablecog.hooks.stablecog"],
            }
        ],
        "operators": [
            {
                "integration-name": "Stablecog",
                "python-modules": [
                    "airflow_provider_stablecog.operators.upscale",
                    "airflow_provider_stablecog.operators.generate",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Stablecog",
                "python-modules": ["airflow_provider_stablecog.sensors.credits"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Stablecog",
                "python-modules": ["airflow_provider_stablecog.triggers.credits"],
            }
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_stablecog.hooks.stablecog.StablecogHook",
                "hook-name": "Stablecog",
                "connection-type": "stablecog",
                # No "default" in these schemas: the form would fill the fields with it and saving
                # would freeze every default into the connection's extra. Empty means the hook's
                # default (said in each description and placeholder), so a new release's defaults apply.
                "conn-fields": {
                    "timeout": {
                        "label": "Read timeout (s)",
                        "description": (
                            "Seconds to wait for an answer; the server may hold an upscale open for "
                            f"minutes. Empty: {empty['timeout']}."
                        ),
                        "schema": {"type": ["number", "null"], "minimum": 1},
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (s)",
                        "description": (
                            f"Seconds to wait for the connection to the Base URL to open. Empty: {empty['connect_timeout']}."
                        ),
                        "schema": {"type": ["number", "null"], "minimum": 0.1},
                    },
                    "plan_concurrency": {
                        "label": "Plan concurrency",
                        "description": (
                            "Parallel upscales your plan allows: free 1, starter 2, pro 3, ultimate 4. "
                            f"Empty: {empty['plan_concurrency']} (the free plan; the embedded emulator "
                            "prints a connection with its own plan)."
                        ),
                        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 64},
                    },
                    "rate_limit": {
                        "label": "Rate limit (requests/s)",
                        "description": (
                            "Client-side cap per task; the API limits each IP to about 10 create "
                            f"requests/s. 0 turns it off. Empty: {empty['rate_limit']}."
                        ),
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                    "max_retries": {
                        "label": "Retries of transient errors",
                        "description": (
                            "How often a 429, 5xx, TIMEOUT or connection error is retried before the "
                            f"item fails; a rejected key or missing credits is never retried. Empty: {empty['max_retries']}."
                        ),
                        "schema": {"type": ["integer", "null"], "minimum": 0},
                    },
                    "retry_backoff": {
                        "label": "First retry backoff (s)",
                        "description": (
                            f"Doubled on each retry (with jitter); a 429's Retry-After wins. Empty: {empty['retry_backoff']}."
                        ),
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"password": "API key", "host": "Base URL"},
                    "placeholders": {
                        "host": "https://api.stablecog.com",
                        "password": "sc-...",
                        **empty,  # an empty field shows the default it stands for
                    },
                },
            }
        ],
    }
