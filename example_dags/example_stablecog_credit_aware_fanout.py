"""# Credit-aware fan-out

Size the credits check to the whole list, then upscale it in mapped chunks.

## What it shows

Build a large work list → split it into chunks → **one** credits sensor sized to the whole list (one
credit per unique image not already in the destination, plus a reserve) *before* the fan-out, so the
pipeline never starts a batch it cannot finish → `UpscaleOperator.partial(...).expand(inputs=chunks)`,
one mapped task per chunk, capped by the `stablecog` pool so all chunks together stay within the
plan's concurrency → a collect step that reports the totals.

## Connection and pool

The connection is `stablecog_default` (type `stablecog`). The pool must exist **before the first
run**, sized to your plan's concurrency + 1 (the server runs one more upscale than the plan and holds
the rest):

```bash
airflow pools set stablecog 5 "Stablecog plan"     # pro plan: 4 + 1
```

Each chunk runs up to `max_concurrency` upscales at once and claims **`pool_slots` equal to its
`max_concurrency`** (2 here), so the pool bounds the upscales of all chunks together: with 5 slots,
two chunks (4 upscales) run at a time and the others wait in the pool. Without the pool, Airflow
leaves the chunks *scheduled* forever; the `check_pool` task notices (no chunk started within
`pool_check_timeout` seconds) and fails with the command above. Create the pool and the waiting
chunks start at once.

## Environment variables (read when the file is parsed)

| variable | default | meaning |
|---|---|---|
| `STABLECOG_POOL` | `stablecog` | the pool the chunks use |
| `STABLECOG_CHUNK_CONCURRENCY` | `2` | upscales in flight per chunk = the pool slots each chunk claims; choose a divisor of plan + 1 (1 or 5 for a pro plan) so the chunks together can fill the pool |
| `STABLECOG_EXAMPLE_SAMPLES_URL` | `http://127.0.0.1:8765` | the emulator whose sample images make the default work list |

## Params

- `images`: the work list (default: 40 sample images of the emulator);
- `chunk_size`: images per mapped task;
- `destination`: where images and the manifest go (local path or `s3://...`);
- `reserve`: credits to keep after the batch;
- `pool_check_timeout`: seconds the chunks may wait for the pool before `check_pool` fails.

Each chunk has `retries=2`: a killed or failed chunk resumes from its checkpoint without paying twice.

## The reserve across chunks

Chunks running at once (on one worker or many, e.g. CeleryExecutor) each see the same balance, so
each one's own floor could be crossed by what the others have in flight. The sensor therefore
pushes a `credit_plan` XCom (the balance it saw, the credits the whole list needs, the reserve), and
every chunk takes `credit_plan=XComArg(enough_credits, key="credit_plan")`: a try sends at most its
share, so all chunks together never take the account below `reserve` (the bound is in the
provider's README and `airflow_provider_stablecog/fanout.py`). The `chunk` task splits the list's
unique items, so no image is in two chunks.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, XComArg, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

POOL = os.environ.get("STABLECOG_POOL", "stablecog")
SAMPLES_URL = os.environ.get("STABLECOG_EXAMPLE_SAMPLES_URL", "http://127.0.0.1:8765").rstrip("/")
# upscales in flight per chunk = the pool slots each chunk claims
CHUNK_CONCURRENCY = int(os.environ.get("STABLECOG_CHUNK_CONCURRENCY", "2"))
DEFAULT_IMAGES = [f"{SAMPLES_URL}/samples/{96 + 8 * (i % 8)}x{96 + 8 * (i // 8)}.png" for i in range(40)]
POOL_HELP = f'airflow pools set {POOL} 5 "Stablecog plan"'

with DAG(
    dag_id="example_stablecog_credit_aware_fanout",
    description="One credits check for the whole list, then mapped upscale chunks capped by a pool",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["stablecog", "example", "fan-out"],
    params={
        "images": Param(DEFAULT_IMAGES, type="array", description="Image URLs, IDs or paths to upscale."),
        "chunk_size": Param(10, type="integer", minimum=1, description="Images per mapped upscale task."),
        "destination": Param(
            "/tmp/stablecog-example/fanout", type="string", description="Where images and manifest.jsonl go."
        ),
        "reserve": Param(0, type="integer", minimum=0, description="Credits to keep after the batch."),
        "pool_check_timeout": Param(
            300,
            type="integer",
            minimum=5,
            description=f"Seconds the chunks may wait for a slot of the '{POOL}' pool before check_pool fails.",
        ),
    },
    doc_md=__doc__,
) as dag:

    @task
    def work_list(params: dict | None = None) -> list[str]:
        return list(params["images"])

    @task
    def chunk(images: list[str], params: dict | None = None) -> list[list[str]]:
        size = int(params["chunk_size"])
        unique = list(dict.fromkeys(images))  # one image in one chunk: the chunks share the credits plan
        chunks = [unique[i : i + size] for i in range(0, len(unique), size)]
        print(f"{len(images)} images ({len(unique)} unique) in {len(chunks)} chunks of up to {size}")
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
        max_concurrency=CHUNK_CONCURRENCY,
        pool=POOL,
        pool_slots=CHUNK_CONCURRENCY,  # a pool of plan + 1 slots bounds all chunks together
        retries=2,
        retry_delay=timedelta(seconds=10),
        map_index_template="{{ stablecog_batch_label }}",
        # each chunk's share of the account: together they keep the sensor's reserve
        credit_plan=XComArg(enough_credits, key="credit_plan"),
    ).expand(inputs=chunks)

    # reschedule mode: no worker slot held between pokes; 30 s apart, so a worker that is slow to
    # exit is gone before the next poke is queued
    @task.sensor(mode="reschedule", poke_interval=30, timeout=24 * 60 * 60)
    def check_pool(params: dict | None = None, ti=None, run_id: str | None = None, **context) -> bool:
        """Fail with the fix when no chunk leaves *scheduled* in time (the pool is missing or too small).

        A reschedule-mode sensor: it holds no worker slot between pokes, and done as soon as a chunk runs.
        """
        import pendulum

        from airflow_provider_stablecog.compat import AirflowFailException

        started_states = [
            "queued",
            "running",
            "success",
            "failed",
            "up_for_retry",
            "up_for_reschedule",
            "deferred",
        ]
        started = ti.get_ti_count(
            dag_id=ti.dag_id, task_ids=["upscale_chunk"], run_ids=[run_id], states=started_states
        )
        if started:
            print(f"Chunks are running in pool '{POOL}'")
            return True
        timeout = int(params["pool_check_timeout"])
        first_poke = (
            ti.get_first_reschedule_date(context | {"ti": ti}) or ti.start_date or pendulum.now("UTC")
        )
        waited = (pendulum.now("UTC") - first_poke).total_seconds()
        if waited > timeout:
            raise AirflowFailException(
                f"No upscale_chunk started within {timeout} s: they wait for the pool '{POOL}', which "
                f"does not exist or has fewer than {CHUNK_CONCURRENCY} slots. Create it with: {POOL_HELP} "
                "(size it to your plan's concurrency + 1); the waiting chunks then start."
            )
        print(f"No chunk started yet after {waited:.0f} s (waiting for a slot in pool '{POOL}')")
        return False

    @task
    def collect(chunk_results: list[list[dict]]) -> dict:
        from collections import Counter

        records = [r for chunk_records in chunk_results for r in chunk_records]
        totals = Counter(r["status"] for r in records)
        errors = Counter(r["error"] for r in records if r.get("error"))
        summary = {"images": len(records), "chunks": len(chunk_results), **totals, "errors": dict(errors)}
        print(f"Fan-out totals: {summary}")
        return summary

    enough_credits >> [upscale_chunks, check_pool()]
    collect(upscale_chunks.output)
