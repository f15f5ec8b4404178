"""# Approval before a large spend

Price the batch with a dry run, ask a human only when the price is over a threshold, and upscale
on approval with a budget of exactly the approved price.

## What it shows

`work_list` → `price` (`UpscaleOperator(dry_run=True)`: credits needed, balance, what is already
done; nothing sent) → `route` (a branch: over `approval_threshold` credits asks, otherwise goes on)
→ `approve` (Airflow's `ApprovalOperator`, human in the loop: the request shows the credits
needed, the balance before and after, the first items and the contact sheet link if given) →
`upscale` with `max_credits` = the approved price, so it can never spend more than a human said
yes to, whatever its retries do.

- **Approve**: the upscale runs (spending at most the approved credits).
- **Reject**: the upscale is skipped; nothing is spent.
- Under the threshold: no question asked; the upscale runs at once.

Answer in the UI (the task's *Required actions*) or through the REST API:

```bash
curl -X PATCH "$AIRFLOW/api/v2/dags/example_stablecog_approval/dagRuns/$RUN_ID/taskInstances/approve/-1/hitlDetails" \\
     -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
     -d '{"chosen_options": ["Approve"]}'
```

Tasks that talk to Stablecog carry the provider's retry policy (`stablecog_retry_policy()`): a
rejected key fails at once, a rate limit waits for `Retry-After`, a 5xx is retried (Airflow 3.3;
a no-op on 3.1 and 3.2).

## Params

- `images`: the work list (default: 12 sample images of the emulator);
- `destination`: where images and the manifest go (local path or `s3://...`);
- `approval_threshold`: ask when the batch needs more credits than this;
- `contact_sheet`: a link shown in the request (optional).
"""

from __future__ import annotations

import inspect
import os
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Param, task

from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.retry_policy import stablecog_retry_policy

SAMPLES_URL = os.environ.get("STABLECOG_EXAMPLE_SAMPLES_URL", "http://127.0.0.1:8765").rstrip("/")
DEFAULT_IMAGES = [f"{SAMPLES_URL}/samples/{80 + 8 * i}x{72 + 4 * i}.png" for i in range(12)]
# how long the question stays open: `response_timeout` in the standard provider that comes with
# Airflow 3.2+, `execution_timeout` in the one that comes with 3.1
WAIT_FOR_A_HUMAN = (
    {"response_timeout": timedelta(days=1)}
    if "response_timeout" in inspect.signature(ApprovalOperator.__mro__[1].__init__).parameters
    else {"execution_timeout": timedelta(days=1)}
)

with DAG(
    dag_id="example_stablecog_approval",
    description="Dry-run price, human approval over a threshold, then an upscale capped at the approved price",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["stablecog", "example", "approval"],
    params={
        "images": Param(DEFAULT_IMAGES, type="array", description="Image URLs, IDs or paths to upscale."),
        "destination": Param(
            "/tmp/stablecog-example/approved",
            type="string",
            description="Where images and manifest.jsonl go.",
        ),
        "approval_threshold": Param(
            10,
            type="integer",
            minimum=0,
            description="Ask a human when the batch needs more credits than this.",
        ),
        "contact_sheet": Param(
            "", type="string", description="A link shown in the approval request (optional)."
        ),
    },
    doc_md=__doc__,
) as dag:

    @task
    def work_list(params: dict | None = None) -> list[str]:
        return list(params["images"])

    images = work_list()

    price = UpscaleOperator(
        task_id="price",
        inputs=images,
        destination="{{ params.destination }}",
        dry_run=True,
        retries=2,
        retry_policy=stablecog_retry_policy(),
    )

    @task.branch
    def route(plan: dict, images: list[str], params: dict | None = None, ti=None) -> str:
        from airflow_provider_stablecog.approval import spend_request

        request = spend_request(
            plan,
            images,
            threshold=int(params["approval_threshold"]),
            contact_sheet=params.get("contact_sheet") or None,
        )
        ti.xcom_push(key="subject", value=request.subject)
        ti.xcom_push(key="body", value=request.body)
        if request.needs_approval:
            print(f"{request.credits_needed} credits > {request.threshold}: asking for approval")
            return "approve"
        print(f"{request.credits_needed} credits <= {request.threshold}: no approval needed")
        return "upscale"

    approve = ApprovalOperator(
        task_id="approve",
        subject="{{ ti.xcom_pull(task_ids='route', key='subject') }}",
        body="{{ ti.xcom_pull(task_ids='route', key='body') }}",
        **WAIT_FOR_A_HUMAN,
    )

    upscale = UpscaleOperator(
        task_id="upscale",
        inputs=images,
        destination="{{ params.destination }}",
        # the budget is the price a human approved (or the price under the threshold)
        max_credits="{{ ti.xcom_pull(task_ids='price')['credits_needed'] }}",
        trigger_rule="none_failed_min_one_success",
        retries=2,
        retry_delay=timedelta(seconds=10),
        retry_policy=stablecog_retry_policy(),
    )

    route(price.output, images) >> [approve, upscale]
    approve >> upscale
