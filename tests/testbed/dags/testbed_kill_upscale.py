"""Test bed: one UpscaleOperator over 60 distinct images, killed mid-batch by the test (issue #11/#12).

Plan concurrency 2 (connection ``stablecog_plan2``), ``max_concurrency`` 3, one retry after 2 s.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator

SAMPLES_URL = os.environ.get("STABLECOG_TESTBED_SAMPLES_URL", "http://127.0.0.1:8765").rstrip("/")

with DAG(
    dag_id="testbed_kill_upscale",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "count": Param(60, type="integer", minimum=1, description="Distinct sample images."),
        "destination": Param("/tmp/stablecog-testbed/kill", type="string", description="Output folder."),
    },
    doc_md=__doc__,
) as dag:

    @task
    def images(params: dict | None = None) -> list[str]:
        return [f"{SAMPLES_URL}/samples/{64 + i}x48.png" for i in range(int(params["count"]))]

    UpscaleOperator(
        task_id="upscale",
        inputs=images(),
        destination="{{ params.destination }}",
        stablecog_conn_id="stablecog_plan2",
        max_concurrency=3,
        progress_interval=2,
        retries=1,
        retry_delay=timedelta(seconds=2),
    )
