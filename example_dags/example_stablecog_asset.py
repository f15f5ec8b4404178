"""# Asset-driven pipeline

Upscale into a fixed destination, and let a downstream DAG run whenever it changed.

## What it shows

`example_stablecog_asset_producer` upscales a list of images into a **literal** destination (a
plain path or URL, not a template). For a literal destination `UpscaleOperator` adds the destination
as an outlet **Asset** (`file:///...` or `s3://bucket/prefix`) and, on success, emits an asset event
whose `extra` has the counts (`upscaled`, `skipped`, `failed`) and the destination.

`example_stablecog_asset_consumer` is scheduled on that Asset: it runs after every successful
producer run, reads the counts from the triggering event and the destination's `manifest.jsonl`.
A templated destination (`"{{ params.destination }}"`) gives no Asset: the URI is only known at run time.

## Environment variables (read when the file is parsed)

| variable | default | meaning |
|---|---|---|
| `STABLECOG_EXAMPLE_ASSET_DESTINATION` | `/tmp/stablecog-example/asset` | the destination, and so the Asset |
| `STABLECOG_EXAMPLE_SAMPLES_URL` | `http://127.0.0.1:8765` | the emulator whose sample images are upscaled |

## Params (producer)

- `images`: the images to upscale (default: 4 sample images of the emulator).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.retry_policy import stablecog_retry_policy

DESTINATION = os.environ.get("STABLECOG_EXAMPLE_ASSET_DESTINATION", "/tmp/stablecog-example/asset")
SAMPLES_URL = os.environ.get("STABLECOG_EXAMPLE_SAMPLES_URL", "http://127.0.0.1:8765").rstrip("/")
DEFAULT_IMAGES = [f"{SAMPLES_URL}/samples/{size}.png" for size in ("128x96", "96x128", "112x112", "160x120")]
# the same URI as the operator's outlet: an absolute file:// URL for a local path, the URL otherwise
ASSET_URI = (DESTINATION if "://" in DESTINATION else "file://" + os.path.abspath(DESTINATION)).rstrip("/")
UPSCALED = Asset(uri=ASSET_URI, name=f"stablecog-upscaled:{ASSET_URI}")

with DAG(
    dag_id="example_stablecog_asset_producer",
    description="Upscale into a literal destination: the destination becomes an outlet Asset",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["stablecog", "example", "asset"],
    params={
        "images": Param(DEFAULT_IMAGES, type="array", description="Image URLs, IDs or paths to upscale.")
    },
    doc_md=__doc__,
) as producer:

    @task
    def images(params: dict | None = None) -> list[str]:
        return list(params["images"])

    UpscaleOperator(
        task_id="upscale",
        inputs=images(),
        destination=DESTINATION,  # literal: UpscaleOperator adds Asset(ASSET_URI) to its outlets
        retries=2,
        retry_policy=stablecog_retry_policy(),  # 401 fails at once, 429 waits, 5xx retries
        retry_delay=timedelta(seconds=10),
    )

with DAG(
    dag_id="example_stablecog_asset_consumer",
    description="Runs whenever the Stablecog producer updated its destination",
    schedule=[UPSCALED],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["stablecog", "example", "asset"],
    doc_md=__doc__,
) as consumer:

    @task
    def report(triggering_asset_events=None) -> dict:
        """The producer's counts (from the asset event) and what the destination's manifest holds."""
        from airflow_provider_stablecog.utils.storage import read_manifest

        events = [event for events in (triggering_asset_events or {}).values() for event in events]
        extra = dict(events[-1].extra) if events else {}
        manifest = read_manifest(DESTINATION)
        summary = {
            "events": len(events),
            "upscaled": extra.get("upscaled"),
            "skipped": extra.get("skipped"),
            "failed": extra.get("failed"),
            "images_in_destination": len(manifest),
        }
        print(f"Destination {ASSET_URI} updated: {summary}")
        return summary

    report()
