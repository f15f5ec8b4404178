"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    from airflow_provider_stablecog import __version__

    return {
        "package-name": "airflow-provider-stablecog",
        "name": "Stablecog",
        "description": "Upscale images with the Stablecog API: hook, UpscaleOperator, credits sensor.",
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
                "python-modules": ["airflow_provider_stablecog.operators.upscale"],
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
                "conn-fields": {
                    "timeout": {
                        "label": "Read timeout (s)",
                        "description": "Seconds to wait for an answer; the server may hold an upscale for 240 s.",
                        "schema": {"type": ["number", "null"], "default": 300, "minimum": 1},
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (s)",
                        "schema": {"type": ["number", "null"], "default": 10, "minimum": 0.1},
                    },
                    "plan_concurrency": {
                        "label": "Plan concurrency",
                        "description": "Parallel upscales your plan allows: free 1, starter 2, pro 3, ultimate 4.",
                        "schema": {"type": ["integer", "null"], "default": 1, "minimum": 1, "maximum": 64},
                    },
                    "rate_limit": {
                        "label": "Rate limit (requests/s)",
                        "description": "Client-side cap per task; the API limits each IP to about 10 create requests/s.",
                        "schema": {"type": ["number", "null"], "default": 8, "minimum": 0},
                    },
                    "max_retries": {
                        "label": "Retries of transient errors",
                        "schema": {"type": ["integer", "null"], "default": 5, "minimum": 0},
                    },
                    "retry_backoff": {
                        "label": "First retry backoff (s)",
                        "description": "Doubled on each retry (with jitter); a 429's Retry-After wins.",
                        "schema": {"type": ["number", "null"], "default": 1, "minimum": 0},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"password": "API key", "host": "Base URL"},
                    "placeholders": {
                        "host": "https://api.stablecog.com",
                        "password": "sc-...",
                    },
                },
            }
        ],
    }
