"""The ready task retry policy: decided by Stablecog error class, found in the cause chain."""

from __future__ import annotations

from datetime import timedelta

import pytest

from airflow_provider_stablecog import compat
from airflow_provider_stablecog.exceptions import (
    InsufficientCreditsError,
    RateLimitError,
    StablecogBudgetExceededError,
    StablecogConnectionError,
    StablecogInputError,
    StablecogServerError,
    error_from_response,
)
from airflow_provider_stablecog.retry_policy import (
    StablecogTaskRetryPolicy,
    retry_policy_kwargs,
    stablecog_retry_policy,
)

pytestmark = pytest.mark.skipif(not compat.AIRFLOW_V_3_3_PLUS, reason="retry policies came in Airflow 3.3")


def _decide(exc: BaseException):
    return StablecogTaskRetryPolicy().evaluate(exc, try_number=1, max_tries=4)


def _action(exc: BaseException) -> str:
    return _decide(exc).action.value


def test_a_401_fails_at_once_and_a_502_is_retried():
    assert _action(error_from_response(401, {}, "Unauthorized")) == "fail"
    assert _action(error_from_response(403, {}, '{"error":"user_banned"}')) == "fail"
    decision = _decide(error_from_response(502, {}, "<html>bad gateway</html>"))
    assert decision.action.value == "retry" and decision.retry_delay is None  # the task's retry_delay
    assert _action(StablecogConnectionError("refused")) == "retry"


def test_a_rate_limit_waits_for_retry_after_capped():
    decision = _decide(error_from_response(429, {"Retry-After": "42"}, "Too Many Requests"))
    assert decision.action.value == "retry" and decision.retry_delay == timedelta(seconds=42)
    assert _decide(RateLimitError("x", retry_after=86_400)).retry_delay == timedelta(minutes=15)
    assert _decide(RateLimitError("x")).retry_delay == timedelta(seconds=60)


def test_a_spent_budget_and_a_bad_request_fail_at_once():
    assert _action(StablecogBudgetExceededError("spent")) == "fail"
    assert _action(StablecogInputError("bad", code="invalid_image_url")) == "fail"


def test_the_cause_chain_is_searched_and_the_rest_is_left_to_airflow():
    try:
        try:
            raise StablecogServerError("boom", code="bad_gateway", status_code=502)
        except StablecogServerError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert _action(outer) == "retry"
    assert _action(InsufficientCreditsError("empty")) == "default"  # a top-up and a retry may help
    assert _action(ValueError("not ours")) == "default"


def test_one_line_on_any_operator_and_round_trip():
    policy = stablecog_retry_policy()
    assert isinstance(policy, StablecogTaskRetryPolicy)
    assert retry_policy_kwargs()["retry_policy"] is not None
    again = StablecogTaskRetryPolicy.deserialize(StablecogTaskRetryPolicy(timedelta(minutes=2)).serialize())
    assert again.max_rate_limit_delay == timedelta(minutes=2)


def test_lines_without_retry_policies_drop_the_argument(monkeypatch):
    from airflow_provider_stablecog.operators.upscale import UpscaleOperator

    op = UpscaleOperator(task_id="u", inputs=["x"], retry_policy=stablecog_retry_policy())
    assert isinstance(op.retry_policy, StablecogTaskRetryPolicy)
    monkeypatch.setitem(compat.NEWER_OPERATOR_ARGUMENTS, "retry_policy", False)  # as on 3.1 / 3.2
    assert compat.drop_unsupported_arguments({"retry_policy": None, "retries": 2}) == {"retries": 2}
