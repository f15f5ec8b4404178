"""# Generate, then upscale by output ID

Prompts → images → 4× upscales, on one engine and one credit ledger.

## What it shows

**Read** a small prompt catalogue (`example_dags/data/prompts.json`: a prompt and optional
per-item parameters) → **wait for credits**: `StablecogCreditsSensor` sized for the prompts
(Σ `num_outputs`) → **generate** with `StablecogGenerateOperator` (defaults 256×256, 2 images per
prompt; every prompt without a seed gets one derived from the prompt, so a retry asks for the same
images) → **upscale** the generated images by their output IDs with `UpscaleOperator` (no
re-upload; 1 credit each, free when already upscaled) → **contact sheet**: each generated image
beside its upscale, `contact_sheet.png` in the destination. Both paid tasks have `retries=2` and
resume without paying twice: a lost generation answer is found again in Stablecog's outputs
listing.

## Connection

`stablecog_default` (type `stablecog`): `stablecog-emulator --port 8765` and the connection it
prints, or your key for the real API (a prompt costs `num_outputs` credits; 256×256 images).

## Params

- `catalogue`: JSON file, a list of `{"id", "prompt", ...per-item parameters}`;
- `num_outputs`: images per prompt unless an item says otherwise;
- `destination`: folder (or `s3://...`) for `generated/`, `upscaled/` and `contact_sheet.png`.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.generate import StablecogGenerateOperator
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.retry_policy import stablecog_retry_policy
from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATION = {"width": 256, "height": 256}

with DAG(
    dag_id="example_stablecog_generate_upscale",
    description="Prompts from a catalogue -> credits -> generate -> upscale by output ID -> contact sheet",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["stablecog", "example", "generate"],
    params={
        "catalogue": Param(
            os.path.join(HERE, "data", "prompts.json"),
            type="string",
            description='JSON file: a list of {"id", "prompt", ...per-item parameters}.',
        ),
        "num_outputs": Param(2, type="integer", minimum=1, maximum=4, description="Images per prompt."),
        "destination": Param(
            "/tmp/stablecog-example/generated-upscaled",
            type="string",
            description="Folder (or s3://...) for generated/, upscaled/ and contact_sheet.png.",
        ),
    },
    render_template_as_native_obj=True,  # num_outputs stays an int
    doc_md=__doc__,
) as dag:

    @task
    def read_prompts(params: dict | None = None) -> list[dict]:
        import json

        with open(params["catalogue"], encoding="utf-8") as fh:
            items = json.load(fh)
        prompts = [{k: v for k, v in item.items() if k != "id"} for item in items]
        print(f"{len(prompts)} prompts from {params['catalogue']}")
        return prompts

    prompts = read_prompts()
    enough_credits = StablecogCreditsSensor(
        task_id="enough_credits",
        prompts=prompts,
        generation_defaults={**GENERATION, "num_outputs": "{{ params.num_outputs }}"},
        destination="{{ params.destination }}/generated",
        poke_interval=60,
        timeout=3600,
        mode="reschedule",
    )
    generate = StablecogGenerateOperator(
        task_id="generate",
        prompts=prompts,
        num_outputs="{{ params.num_outputs }}",
        destination="{{ params.destination }}/generated",
        max_failed_ratio=0.25,  # a prompt refused by moderation must not stop the others
        retries=2,
        retry_policy=stablecog_retry_policy(),  # 401 fails at once, 429 waits, 5xx retries
        retry_delay=timedelta(seconds=10),
        **GENERATION,
    )
    upscale = UpscaleOperator(
        task_id="upscale",
        inputs=generate.output_ids,  # the flat list of output IDs: no re-upload
        destination="{{ params.destination }}/upscaled",
        retries=2,
        retry_policy=stablecog_retry_policy(),  # 401 fails at once, 429 waits, 5xx retries
        retry_delay=timedelta(seconds=10),
    )

    @task
    def contact_sheet(generated: list[dict], upscaled: list[dict], params: dict | None = None) -> dict:
        """Each generated image beside its upscale (joined by output ID)."""
        from airflow_provider_stablecog.utils.contact_sheet import make_contact_sheet

        by_output = {r["input"]: r.get("path") for r in upscaled if r.get("path")}
        pairs = [
            (path, by_output[output_id])
            for record in generated
            for output_id, path in zip(record.get("output_ids", []), record.get("paths", []), strict=False)
            if output_id in by_output
        ]
        target = os.path.join(params["destination"], "contact_sheet.png")
        sheet = make_contact_sheet(
            pairs, target, title=f"Stablecog: {len(pairs)} generated images, 4x upscaled"
        )
        print(f"Contact sheet of {len(pairs)} pairs: {sheet}")
        return {"pairs": len(pairs), "contact_sheet": sheet}

    enough_credits >> generate
    contact_sheet(generate.output, upscale.output)
