"""Test bed: one UpscaleOperator over 60 distinct images, killed mid-batch (issue #11/#12).

Plan concurrency 2 (connection ``stablecog_plan2``), ``max_concurrency`` 3. Three DAGs, one per way
a try can end mid-batch:

* ``testbed_kill_upscale``: SIGKILLed by the test, one automatic retry after 2 s;
* ``testbed_kill_no_retry``: SIGKILLed, no retry (the test then starts a new run, same destination);
* ``testbed_timeout_upscale``: ``execution_timeout`` of 8 s per try, retried until done.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator

SAMPLES_URL = os.environ.get("STABLECOG_TESTBED_SAMPLES_URL", "http://127.0.0.1:8765").rstrip("/")


def kill_dag(dag_id: str, **upscale_args) -> DAG:
    with DAG(
        dag_id=dag_id,
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
            retry_delay=timedelta(seconds=2),
            **upscale_args,
        )
    return dag


kill_retry = kill_dag("testbed_kill_upscale", retries=1)
kill_no_retry = kill_dag("testbed_kill_no_retry", retries=0)
timeout_retry = kill_dag("testbed_timeout_upscale", retries=6, execution_timeout=timedelta(seconds=8))
