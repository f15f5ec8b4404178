"""Ask a human before a large spend: the text of the request, from the upscale's dry run.

The pattern (``example_dags/example_stablecog_approval.py``), with Airflow's human-in-the-loop
operators (``ApprovalOperator`` from the standard provider; Airflow 3.1+)::

    price = UpscaleOperator(task_id="price", inputs=images, destination=dest, dry_run=True)

    @task.branch
    def route(plan, images, ti=None):
        request = spend_request(plan, images, threshold=100)
        ti.xcom_push(key="subject", value=request.subject)
        ti.xcom_push(key="body", value=request.body)
        return "approve" if request.needs_approval else "upscale"

    approve = ApprovalOperator(
        task_id="approve",
        subject="{{ ti.xcom_pull(task_ids='route', key='subject') }}",
        body="{{ ti.xcom_pull(task_ids='route', key='body') }}",
    )
    upscale = UpscaleOperator(
        task_id="upscale", inputs=images, destination=dest,
        max_credits="{{ ti.xcom_pull(task_ids='price')['credits_needed'] }}",  # what was approved
        trigger_rule="none_failed_min_one_success",
    )
    route(price.output, images) >> [approve, upscale]
    approve >> upscale

"Approve" runs the upscale with a budget of exactly the approved price; "Reject" skips it, and
nothing is spent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: items listed in the request body
SHOWN_ITEMS = 5


@dataclass(frozen=True)
class SpendRequest:
    """What to ask: ``needs_approval`` when the price exceeds the threshold."""

    credits_needed: int
    threshold: int
    subject: str
    body: str

    @property
    def needs_approval(self) -> bool:
        return self.credits_needed > self.threshold


def spend_request(
    plan: Mapping[str, Any],
    inputs: Sequence[Any] | Any,
    *,
    threshold: int,
    contact_sheet: str | None = None,
    shown: int = SHOWN_ITEMS,
) -> SpendRequest:
    """The approval request for an upscale's dry-run ``plan`` (``UpscaleOperator(dry_run=True)``).

    The body (Markdown) shows the credits needed, the balance and what remains after, the budget
    when one is set, the first ``shown`` items (credentials and presigned signatures redacted) and
    the contact sheet's link when there is one.

    :raises ValueError: ``plan`` is not a dry-run plan (it says what to pass instead).
    """
    from airflow_provider_stablecog.utils.inputs import coerce_input_list, plan_inputs

    if not isinstance(plan, Mapping) or not plan.get("dry_run") or "credits_needed" not in plan:
        raise ValueError(
            "spend_request needs the return value of UpscaleOperator(dry_run=True) (a dict with "
            f"'dry_run' and 'credits_needed'), got {type(plan).__name__}; pass the pricing task's output"
        )
    needed = int(plan["credits_needed"])
    items = plan_inputs(coerce_input_list(inputs))
    count = len(items.positions)
    remaining = plan.get("credits_remaining")
    lines = [
        f"**{needed} credits** to upscale {plan.get('to_upscale', count)} of {count} images "
        f"(approval asked above {threshold} credits).",
        "",
        "| | credits |",
        "|---|---|",
        f"| needed | {needed} |",
    ]
    if remaining is not None:
        lines += [f"| balance now | {remaining} |", f"| balance after | {int(remaining) - needed} |"]
    if plan.get("credit_reserve"):
        lines.append(f"| reserve kept | {plan['credit_reserve']} |")
    if plan.get("max_credits") is not None:
        lines.append(f"| budget left (max_credits) | {plan.get('budget_left')} |")
    done, free, invalid = plan.get("already_done", 0), plan.get("free", 0), plan.get("invalid", 0)
    if done or free or invalid:
        lines += ["", f"Not charged: {done} already done, {free} free (already upscaled), {invalid} invalid."]
    if remaining is not None and int(remaining) - needed < int(plan.get("credit_reserve") or 0):
        lines += [
            "",
            "⚠️ The balance does not cover this batch and its reserve: the rest will be left not started.",
        ]
    lines += ["", f"First {min(shown, count)} of {count} items:", ""]
    lines += [f"- `{items.display_for(i)}`" for i in range(min(shown, count))]
    if contact_sheet:
        lines += ["", f"Contact sheet: {contact_sheet}"]
    subject = f"Spend {needed} Stablecog credits on {count} images?"
    return SpendRequest(
        credits_needed=needed, threshold=int(threshold), subject=subject, body="\n".join(lines)
    )


__all__ = ["SpendRequest", "spend_request"]
