"""Test bed: the deferrable credits sensor, polling every 2 s, then a tiny upscale."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

SAMPLES_URL = os.environ.get("STABLECOG_EXAMPLE_SAMPLES_URL", "http://127.0.0.1:8765").rstrip("/")
IMAGES = [f"{SAMPLES_URL}/samples/{size}.png" for size in ("72x48", "48x72", "60x60")]

with DAG(
    dag_id="testbed_deferred_credits",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "destination": Param("/tmp/stablecog-testbed/deferred", type="string", description="Output folder.")
    },
    doc_md=__doc__,
) as dag:
    wait = StablecogCreditsSensor(
        task_id="wait_for_credits",
        inputs=IMAGES,
        poke_interval=2,
        timeout=300,
        deferrable=True,
    )
    upscale = UpscaleOperator(task_id="upscale", inputs=IMAGES, destination="{{ params.destination }}")
    wait >> upscale
