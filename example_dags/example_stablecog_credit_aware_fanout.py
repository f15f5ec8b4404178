"""Credit-aware fan-out: size the credits check to the whole list, then upscale it in mapped chunks.

What it shows
    build a large work list → split it into chunks → **one** credits sensor sized to the whole
    list (one credit per unique image not already in the destination, plus a reserve) *before*
    the fan-out, so the pipeline never starts a batch it cannot finish →
    ``UpscaleOperator.partial(...).expand(inputs=chunks)``, one mapped task per chunk, capped by
    the ``stablecog`` pool so all chunks together stay within the plan's concurrency →
    a collect step that reports the totals.

Connection and pool
    ``stablecog_default`` (type ``stablecog``), and a pool sized to your plan:
    ``airflow pools set stablecog 2 "Stablecog plan concurrency"`` (each chunk uses one slot and
    runs ``max_concurrency`` upscales). The default work list points at the local emulator's
    sample images on its default port (``stablecog-emulator --port 8765``).

Params
    ``images``: the work list (default: 40 emulator sample images); ``chunk_size``;
    ``destination``; ``reserve``: credits to keep after the batch.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

DEFAULT_IMAGES = [f"http://127.0.0.1:8765/samples/{96 + 8 * (i % 8)}x{96 + 8 * (i // 8)}.png" for i in range(40)]

with DAG(
    dag_id="example_stablecog_credit_aware_fanout",
    description="One credits check for the whole list, then mapped upscale chunks capped by a pool",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["stablecog", "example", "fan-out"],
    params={
        "images": Param(DEFAULT_IMAGES, type="array"),
        "chunk_size": Param(10, type="integer", minimum=1),
        "destination": Param("/tmp/stablecog-example/fanout", type="string"),
        "reserve": Param(0, type="integer", minimum=0),
    },
    doc_md=__doc__,
) as dag:

    @task
    def work_list(params: dict | None = None) -> list[str]:
        return list(params["images"])

    @task
    def chunk(images: list[str], params: dict | None = None) -> list[list[str]]:
        size = int(params["chunk_size"])
        chunks = [images[i : i + size] for i in range(0, len(images), size)]
        print(f"{len(images)} images in {len(chunks)} chunks of up to {size}")
        return chunks

    images = work_list()
    chunks = chunk(images)

    enough_credits = StablecogCreditsSensor(
        task_id="enough_credits_for_all",
        inputs=images,
        destination="{{ params.destination }}",
        reserve="{{ params.reserve }}",
        poke_interval=60,
        timeout=60 * 60,
        deferrable=True,
    )

    upscale_chunks = UpscaleOperator.partial(
        task_id="upscale_chunk",
        destination="{{ params.destination }}",
        max_concurrency=2,
        pool="stablecog",
        map_index_template="{{ stablecog_batch_label }}",
    ).expand(inputs=chunks)

    @task
    def collect(chunk_results: list[list[dict]]) -> dict:
        from collections import Counter

        records = [r for chunk_records in chunk_results for r in chunk_records]
        totals = Counter(r["status"] for r in records)
        errors = Counter(r["error"] for r in records if r.get("error"))
        summary = {"images": len(records), "chunks": len(chunk_results), **totals, "errors": dict(errors)}
        print(f"Fan-out totals: {summary}")
        return summary

    enough_credits >> upscale_chunks
    collect(upscale_chunks.output)
