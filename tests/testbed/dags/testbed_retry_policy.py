"""Test bed: the provider's retry policy decides a real task's retries (Airflow 3.3).

``bad_key`` reads the balance with a rejected key (401): failed at its first try, retries unused.
``flaky_upscale`` upscales one image while the emulator answers 502: retried, then succeeds.
Both hooks make one attempt per try (``max_retries=0``) so the task sees the error.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_stablecog.retry_policy import retry_policy_kwargs

SAMPLES_URL = os.environ.get("STABLECOG_EXAMPLE_SAMPLES_URL", "http://127.0.0.1:8765").rstrip("/")
POLICY = {"retries": 3, "retry_delay": timedelta(seconds=4), **retry_policy_kwargs()}

with DAG(
    dag_id="testbed_retry_policy",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
) as dag:

    @task(**POLICY)
    def bad_key() -> int:
        from airflow_provider_stablecog.hooks.stablecog import StablecogHook

        return StablecogHook("stablecog_badkey", max_retries=0).get_credits().total_remaining_credits

    @task(**POLICY)
    def flaky_upscale() -> str:
        from airflow_provider_stablecog.hooks.stablecog import StablecogHook

        return StablecogHook(max_retries=0).upscale(f"{SAMPLES_URL}/samples/64x64.png").output.id

    bad_key()
    flaky_upscale()
