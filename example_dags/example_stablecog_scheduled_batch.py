"""# Scheduled batch

Every day, upscale the new images of a folder into a destination.

## What it shows

List the images in a source folder or object-storage prefix → wait until the account has the
credits for all of them (deferrable sensor) → upscale them 4× into a destination with
`UpscaleOperator` → archive the run's manifest. Images already upscaled into the destination (by an
earlier run) are skipped for free: the destination's `manifest.jsonl` remembers them, so each daily
run only pays for what is new. The upscale task has `retries=2`: a retried try resumes where the
killed or failed one stopped and never pays twice.

## Connection

`stablecog_default` (type `stablecog`): password = your API key, host = base URL. With the local
emulator, `stablecog-emulator --port 8765` prints a key; then:

```bash
export AIRFLOW_CONN_STABLECOG_DEFAULT='{"conn_type": "stablecog", "host": "http://127.0.0.1:8765", "password": "<key>", "extra": {"plan_concurrency": 4}}'
```

## Folders (environment variables)

| variable | default | meaning |
|---|---|---|
| `STABLECOG_EXAMPLE_SOURCE` | `/tmp/stablecog-example/incoming` | where new images are listed |
| `STABLECOG_EXAMPLE_DESTINATION` | `/tmp/stablecog-example/upscaled` | where upscaled images and `manifest.jsonl` go |

Both are read when the DAG file is parsed (set them for the dag-processor) and become the
defaults of the trigger form's params. A **missing local source folder fails** the first task with
what to do (create it, or point the param / variable at your folder); an existing empty folder is a
normal "nothing new today" run.

## Params

Override them in the trigger form, or with
`airflow dags trigger example_stablecog_scheduled_batch -c '{"source": "...", "destination": "..."}'`.

- `source`: a local folder or object-storage URL (`s3://bucket/incoming/`);
- `destination`: where upscaled images and the manifest go (local path or `s3://...`);
- `reserve`: credits to keep after the batch.

Each run archives the manifest as `manifests/<run id>.jsonl` in the destination (the run id exists
for scheduled and manual runs alike; `ds` does not exist for manual runs in Airflow 3).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.retry_policy import stablecog_retry_policy
from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_SOURCE = os.environ.get("STABLECOG_EXAMPLE_SOURCE", "/tmp/stablecog-example/incoming")
DEFAULT_DESTINATION = os.environ.get("STABLECOG_EXAMPLE_DESTINATION", "/tmp/stablecog-example/upscaled")


def archive_name(run_id: str) -> str:
    """A file name from a run id (``manual__2026-01-01T00:00:00+00:00`` → ``manual__2026-01-01T00_00_00_00_00``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"


with DAG(
    dag_id="example_stablecog_scheduled_batch",
    description="Daily: upscale new images from a folder into a destination, gated on credits",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["stablecog", "example"],
    params={
        "source": Param(
            DEFAULT_SOURCE,
            type="string",
            description="Local folder or object-storage URL (s3://bucket/incoming/) to list images from. "
            "Default from STABLECOG_EXAMPLE_SOURCE.",
        ),
        "destination": Param(
            DEFAULT_DESTINATION,
            type="string",
            description="Where upscaled images, manifest.jsonl and manifests/<run id>.jsonl go. "
            "Default from STABLECOG_EXAMPLE_DESTINATION.",
        ),
        "reserve": Param(0, type="integer", minimum=0, description="Credits to keep after the batch."),
    },
    doc_md=__doc__,
) as dag:

    @task
    def list_new_images(params: dict | None = None) -> list[str]:
        """Every image file under ``source`` (sorted, so runs are reproducible)."""
        from airflow.sdk import ObjectStoragePath

        from airflow_provider_stablecog.compat import AirflowFailException

        source = params["source"]
        if "://" not in source and not os.path.isdir(source):
            raise AirflowFailException(
                f"Source folder {source!r} does not exist. Create it and put images in it "
                f"(mkdir -p {source}), or trigger with another source "
                '(-c \'{"source": "/path/to/images"}\' or the trigger form), or set '
                "STABLECOG_EXAMPLE_SOURCE for the dag-processor to change the default."
            )
        root = ObjectStoragePath(source if "://" in source else f"file://{os.path.abspath(source)}")
        images = sorted(
            str(p.path if p.protocol == "file" else p)
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if images:
            print(f"{len(images)} images under {source}")
        else:
            print(
                f"0 images under {source}: nothing to upscale today. Put .png/.jpg/.jpeg/.webp files there "
                "(or set the source param / STABLECOG_EXAMPLE_SOURCE) and trigger again."
            )
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
        retries=2,  # a retry resumes from the checkpoint: paid images are not paid again
        retry_policy=stablecog_retry_policy(),  # 401 fails at once, 429 waits, 5xx retries
        retry_delay=timedelta(seconds=10),
    )

    @task
    def record_manifest(results: list[dict], params: dict | None = None, run_id: str | None = None) -> dict:
        """Archive the destination's manifest for this run and report the totals."""
        from collections import Counter

        from airflow.sdk import ObjectStoragePath

        dest = params["destination"]
        root = ObjectStoragePath(dest if "://" in dest else f"file://{os.path.abspath(dest)}")
        totals = dict(Counter(r["status"] for r in results))
        manifest = root / "manifest.jsonl"
        if not manifest.exists():
            print(f"Run {run_id}: {totals}; no manifest in {dest} yet (nothing was upscaled)")
            return {"totals": totals, "manifest": None}
        archive = root / "manifests" / f"{archive_name(run_id)}.jsonl"
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_text(manifest.read_text())
        print(f"Run {run_id}: {totals}; manifest archived at {archive}")
        return {"totals": totals, "manifest": str(archive)}

    wait_for_credits >> upscale
    record_manifest(upscale.output)
