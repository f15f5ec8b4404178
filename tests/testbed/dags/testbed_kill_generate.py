"""Test bed: one StablecogGenerateOperator over 30 prompts (2 images each), SIGKILLed mid-batch.

Plan concurrency 2 (connection ``stablecog_plan2``), ``max_concurrency`` 3, one automatic retry after
2 s: the retry adopts what the killed try had in flight from the outputs listing instead of paying
again.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.generate import StablecogGenerateOperator

with DAG(
    dag_id="testbed_kill_generate",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "count": Param(30, type="integer", minimum=1, description="Distinct prompts."),
        "destination": Param(
            "/tmp/stablecog-testbed/kill-generate", type="string", description="Output folder."
        ),
    },
    doc_md=__doc__,
) as dag:

    @task
    def prompts(params: dict | None = None) -> list[str]:
        return [f"test bed prompt number {i}" for i in range(int(params["count"]))]

    StablecogGenerateOperator(
        task_id="generate",
        prompts=prompts(),
        width=256,
        height=256,
        num_outputs=2,
        destination="{{ params.destination }}",
        stablecog_conn_id="stablecog_plan2",
        max_concurrency=3,
        progress_interval=2,
        retries=1,
        retry_delay=timedelta(seconds=2),
    )
