"""# ETL image enrichment

Load a product catalogue back enriched with upscaled images.

## What it shows

**Extract** product records (id, name, image URL) from a JSON catalogue → **transform**: upscale
every product image 4× with `UpscaleOperator` (duplicate images are paid once) → **load** the
records back, each enriched with `upscaled_path`, `upscaled_url`, `upscaled_width` and
`upscaled_height` (read from the destination's manifest), as JSON Lines ready for a warehouse load.
Products whose image failed keep their record with `upscale_error` set, so nothing is dropped
silently. The upscale task has `retries=2` and resumes without paying twice.

## Connection

`stablecog_default` (type `stablecog`). The bundled catalogue (`example_dags/data/catalogue.json`)
points at sample images of the local emulator at `http://127.0.0.1:8765`: run
`stablecog-emulator --port 8765` and set the connection it prints. An emulator on another address:
set `STABLECOG_EXAMPLE_SAMPLES_URL` (read when the file is parsed) or the `samples_url` param, and
the catalogue's emulator URLs are rewritten to it.

## Params

- `catalogue`: path of the JSON catalogue (a list of `{"sku", "name", "image_url"}`);
- `samples_url`: base URL that replaces `http://127.0.0.1:8765` in the catalogue's image URLs;
- `destination`: where upscaled images and the manifest go;
- `output`: where the enriched records are written (JSON Lines).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.retry_policy import stablecog_retry_policy

HERE = os.path.dirname(os.path.abspath(__file__))
CATALOGUE_SAMPLES_URL = "http://127.0.0.1:8765"  # what the bundled catalogue's image URLs start with
SAMPLES_URL = os.environ.get("STABLECOG_EXAMPLE_SAMPLES_URL", CATALOGUE_SAMPLES_URL).rstrip("/")

with DAG(
    dag_id="example_stablecog_etl_enrichment",
    description="Extract products, upscale their images, load them back enriched",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["stablecog", "example", "etl"],
    params={
        "catalogue": Param(
            os.path.join(HERE, "data", "catalogue.json"),
            type="string",
            description='JSON file: a list of {"sku", "name", "image_url"} records.',
        ),
        "samples_url": Param(
            SAMPLES_URL,
            type="string",
            description=f"Replaces {CATALOGUE_SAMPLES_URL} in the catalogue's image URLs (an emulator elsewhere). "
            "Default from STABLECOG_EXAMPLE_SAMPLES_URL.",
        ),
        "destination": Param(
            "/tmp/stablecog-example/catalogue-images",
            type="string",
            description="Where upscaled images and manifest.jsonl go (local path or s3://...).",
        ),
        "output": Param(
            "/tmp/stablecog-example/catalogue-enriched.jsonl",
            type="string",
            description="Where the enriched records are written (JSON Lines).",
        ),
    },
    doc_md=__doc__,
) as dag:

    @task
    def extract(params: dict | None = None) -> list[dict]:
        import json

        with open(params["catalogue"], encoding="utf-8") as fh:
            records = json.load(fh)
        samples_url = str(params.get("samples_url") or CATALOGUE_SAMPLES_URL).rstrip("/")
        for record in records:
            url = record.get("image_url")
            if isinstance(url, str) and url.startswith(CATALOGUE_SAMPLES_URL + "/"):
                record["image_url"] = samples_url + url[len(CATALOGUE_SAMPLES_URL) :]
        missing = [r.get("sku", i) for i, r in enumerate(records) if not r.get("image_url")]
        if missing:
            print(f"{len(missing)} products have no image_url and are loaded unchanged: {missing[:5]}")
        print(f"Extracted {len(records)} products")
        return records

    @task
    def image_urls(records: list[dict]) -> list[str]:
        return [r["image_url"] for r in records if r.get("image_url")]

    products = extract()
    upscale = UpscaleOperator(
        task_id="upscale_images",
        inputs=image_urls(products),
        destination="{{ params.destination }}",
        max_failed_ratio=0.25,  # a dead product image must not stop the load
        retries=2,  # a retry resumes from the checkpoint: paid images are not paid again
        retry_policy=stablecog_retry_policy(),  # 401 fails at once, 429 waits, 5xx retries
        retry_delay=timedelta(seconds=10),
    )

    @task
    def load(records: list[dict], results: list[dict], params: dict | None = None) -> dict:
        """Join by position (results come in input order) and write the enriched records."""
        import json

        from airflow_provider_stablecog.utils.storage import read_manifest

        dims = {
            r["output_id"]: r for r in read_manifest(params["destination"]).values() if r.get("output_id")
        }
        upscaled = iter(results)
        enriched, failed = [], 0
        for record in records:
            result = next(upscaled) if record.get("image_url") else None
            row = dict(record)
            if result and result["status"] in ("upscaled", "skipped"):
                done = dims.get(result.get("output_id"), {})
                row.update(
                    upscaled_path=result.get("path"),
                    upscaled_url=result.get("url"),
                    upscaled_width=done.get("width"),
                    upscaled_height=done.get("height"),
                )
            elif result:
                failed += 1
                row["upscale_error"] = result.get("error")
            enriched.append(row)
        os.makedirs(os.path.dirname(os.path.abspath(params["output"])), exist_ok=True)
        with open(params["output"], "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in enriched)
        print(f"Loaded {len(enriched)} products into {params['output']} ({failed} without an upscale)")
        return {"loaded": len(enriched), "failed": failed, "output": params["output"]}

    load(products, upscale.output)
