"""The approval request written from an upscale's dry run."""

from __future__ import annotations

import pytest

from airflow_provider_stablecog.approval import spend_request

PLAN = {
    "dry_run": True,
    "inputs": 7,
    "to_upscale": 6,
    "already_done": 1,
    "free": 0,
    "invalid": 0,
    "credits_needed": 6,
    "credits_remaining": 40,
    "credit_reserve": 5,
    "max_credits": 20,
    "budget_left": 14,
}
INPUTS = [f"https://cdn.example/img{i}.png?X-Amz-Signature=secret{i}" for i in range(7)]


def test_the_request_shows_the_price_balance_budget_and_first_items_without_secrets():
    request = spend_request(PLAN, INPUTS, threshold=5, contact_sheet="https://sheets.example/1.png")
    assert request.needs_approval and request.subject == "Spend 6 Stablecog credits on 7 images?"
    body = request.body
    for text in ("**6 credits**", "| balance now | 40 |", "| balance after | 34 |", "| reserve kept | 5 |",
                 "| budget left (max_credits) | 14 |", "1 already done", "First 5 of 7 items",
                 "Contact sheet: https://sheets.example/1.png"):  # fmt: skip
        assert text in body, (text, body)
    assert "secret" not in body and body.count("- `https://cdn.example/") == 5


def test_no_approval_at_or_under_the_threshold_and_a_warning_when_the_balance_is_short():
    assert not spend_request(PLAN, INPUTS, threshold=6).needs_approval
    short = spend_request({**PLAN, "credits_remaining": 8}, INPUTS, threshold=0)
    assert "does not cover this batch and its reserve" in short.body


def test_anything_but_a_dry_run_plan_is_refused_with_what_to_pass():
    with pytest.raises(ValueError, match=r"UpscaleOperator\(dry_run=True\)"):
        spend_request([{"input": "x", "status": "upscaled"}], INPUTS, threshold=1)  # type: ignore[arg-type]
