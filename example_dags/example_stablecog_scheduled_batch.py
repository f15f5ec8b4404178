"""Scheduled batch: every day, upscale the new images of a folder into a destination.

What it shows
    list the images in a source folder or object-storage prefix → wait until the account has
    the credits for all of them (deferrable sensor) → upscale them 4× into a destination with
    ``UpscaleOperator`` → record the run's manifest. Images already upscaled into the
    destination (by an earlier run) are skipped for free: the destination's ``manifest.jsonl``
    remembers them, so each daily run only pays for what is new.

Connection
    ``stablecog_default`` (type ``stablecog``): password = your API key, host = base URL.
    With the local emulator: ``stablecog-emulator --port 8765`` prints a key and
    ``AIRFLOW_CONN_STABLECOG_DEFAULT='{"conn_type": "stablecog", "host": "http://127.0.0.1:8765",
    "password": "<key>", "extra": {"plan_concurrency": 4}}'``.

Params (override with ``airflow dags test ... -c '{"source": "...", "destination": "..."}'``)
    ``source``: a local folder or object-storage URL (``s3://bucket/incoming/``);
    ``destination``: where upscaled images and the manifest go; ``reserve``: credits to keep.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

with DAG(
    dag_id="example_stablecog_scheduled_batch",
    description="Daily: upscale new images from a folder into a destination, gated on credits",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["stablecog", "example"],
    params={
        "source": Param(os.environ.get("STABLECOG_EXAMPLE_SOURCE", "/tmp/stablecog-example/incoming"), type="string"),
        "destination": Param(
            os.environ.get("STABLECOG_EXAMPLE_DESTINATION", "/tmp/stablecog-example/upscaled"), type="string"
        ),
        "reserve": Param(0, type="integer", minimum=0),
    },
    doc_md=__doc__,
) as dag:

    @task
    def list_new_images(params: dict | None = None) -> list[str]:
        """Every image file under ``source`` (sorted, so runs are reproducible)."""
        from airflow.sdk import ObjectStoragePath

        source = params["source"]
        root = ObjectStoragePath(source if "://" in source else f"file://{os.path.abspath(source)}")
        images = sorted(str(p.path if p.protocol == "file" else p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        print(f"{len(images)} images under {source}")
        return images

    images = list_new_images()

    wait_for_credits = StablecogCreditsSensor(
        task_id="wait_for_credits",
        inputs=images,
        destination="{{ params.destination }}",  # images already done there need no credits
        reserve="{{ params.reserve }}",
        poke_interval=60,
        timeout=6 * 60 * 60,
        deferrable=True,
    )

    upscale = UpscaleOperator(
        task_id="upscale",
        inputs=images,
        destination="{{ params.destination }}",
        credit_reserve=0,
        max_failed_ratio=0.05,  # a few broken files must not block the daily batch
    )

    @task
    def record_manifest(results: list[dict], params: dict | None = None, ds: str | None = None) -> dict:
        """Archive the destination's manifest for this run and report the totals."""
        from collections import Counter

        from airflow.sdk import ObjectStoragePath

        dest = params["destination"]
        root = ObjectStoragePath(dest if "://" in dest else f"file://{os.path.abspath(dest)}")
        archive = root / "manifests" / f"{ds}.jsonl"
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_text((root / "manifest.jsonl").read_text())
        totals = dict(Counter(r["status"] for r in results))
        print(f"Run {ds}: {totals}; manifest archived at {archive}")
        return {"totals": totals, "manifest": str(archive)}

    wait_for_credits >> upscale
    record_manifest(upscale.output)
