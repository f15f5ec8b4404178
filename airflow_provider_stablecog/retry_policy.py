"""A ready task retry policy for Stablecog tasks (Airflow 3.3's ``retry_policy=``, AIP-105).

Attach it in one line; on Airflow 3.1 and 3.2, which have no retry policies, it is a no-op (the
provider's operators and sensor drop the argument, and the task keeps its plain ``retries``)::

    from airflow_provider_stablecog.retry_policy import stablecog_retry_policy

    UpscaleOperator(task_id="upscale", ..., retries=3, retry_policy=stablecog_retry_policy())

It decides by the Stablecog error class (:mod:`airflow_provider_stablecog.exceptions`, the one
place that classifies an answer), found anywhere in the exception's cause chain:

=====================================================  ===========================================
the failure                                            decision
=====================================================  ===========================================
a rejected key (401), a banned account (403)           fail now: a retry is refused the same way
the task's budget spent (``max_credits``)              fail now: a retry may spend nothing more
a bad request (input or configuration error)           fail now: a retry sends the same request
rate limited (429)                                     retry after the server's ``Retry-After``
transient (5xx, timeouts, connection, queue limit)     retry, with the task's ``retry_delay``
anything else (e.g. ``insufficient_credits``, a        Airflow's own ``retries`` / ``retry_delay``
partial batch failure)
=====================================================  ===========================================

The policy can fail a task earlier, never retry it more than ``retries`` allows.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_stablecog.compat import AIRFLOW_V_3_3_PLUS
from airflow_provider_stablecog.exceptions import (
    RateLimitError,
    StablecogAuthError,
    StablecogBudgetExceededError,
    StablecogConfigError,
    StablecogError,
    StablecogInputError,
    StablecogRetryableError,
)

if TYPE_CHECKING or AIRFLOW_V_3_3_PLUS:
    from airflow.sdk.definitions.retry_policy import RetryPolicy as _PolicyBase
else:  # Airflow 3.1 / 3.2: nothing consults a policy; keep the class importable
    _PolicyBase = object

if TYPE_CHECKING:
    from airflow.sdk.definitions.retry_policy import RetryDecision

#: the longest a rate limit's ``Retry-After`` may delay a retry (a bad header must not park a task)
MAX_RATE_LIMIT_DELAY = timedelta(minutes=15)
#: the delay when a 429 came without ``Retry-After``
DEFAULT_RATE_LIMIT_DELAY = timedelta(seconds=60)


def stablecog_error(exc: BaseException | None) -> StablecogError | None:
    """The first :class:`StablecogError` in ``exc``'s cause/context chain (operators wrap them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StablecogError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class StablecogTaskRetryPolicy(_PolicyBase):
    """Retry a Stablecog task only when a retry can help; see the module's table.

    :param max_rate_limit_delay: cap on a 429's ``Retry-After``.
    """

    def __init__(self, max_rate_limit_delay: timedelta = MAX_RATE_LIMIT_DELAY) -> None:
        self.max_rate_limit_delay = max_rate_limit_delay

    def evaluate(
        self, exception: BaseException, try_number: int, max_tries: int, context: Any = None
    ) -> RetryDecision:
        from airflow.sdk.definitions.retry_policy import RetryDecision

        error = stablecog_error(exception)
        if error is None:
            return RetryDecision.default()
        if isinstance(error, StablecogAuthError):
            return RetryDecision.fail(
                f"Stablecog refused the key or the account ({error.code}): fix the connection"
            )
        if isinstance(error, StablecogBudgetExceededError):
            return RetryDecision.fail("the task's max_credits is spent: raise it and clear the task")
        if isinstance(error, (StablecogInputError, StablecogConfigError)):
            return RetryDecision.fail(f"a bad request ({error.code}): a retry would send it again")
        if isinstance(error, RateLimitError):
            wait = (
                timedelta(seconds=error.retry_after)
                if error.retry_after is not None
                else DEFAULT_RATE_LIMIT_DELAY
            )
            wait = min(wait, self.max_rate_limit_delay)
            return RetryDecision.retry(
                wait, f"rate limited by Stablecog: retrying after {wait.total_seconds():.0f} s"
            )
        if isinstance(error, StablecogRetryableError):
            return RetryDecision.retry(None, f"transient Stablecog error ({error.code})")
        return RetryDecision.default()

    def serialize(self) -> dict[str, Any]:
        return {
            "__type": "StablecogTaskRetryPolicy",
            "max_rate_limit_delay": self.max_rate_limit_delay.total_seconds(),
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> StablecogTaskRetryPolicy:
        return cls(
            timedelta(seconds=float(data.get("max_rate_limit_delay", MAX_RATE_LIMIT_DELAY.total_seconds())))
        )


def stablecog_retry_policy(max_rate_limit_delay: timedelta = MAX_RATE_LIMIT_DELAY) -> Any:
    """The ready policy for ``retry_policy=``; ``None`` on Airflow lines without retry policies.

    With the provider's operators and sensor the argument is accepted on every line; for other
    operators on 3.1/3.2 pass ``**retry_policy_kwargs()`` instead.
    """
    return StablecogTaskRetryPolicy(max_rate_limit_delay) if AIRFLOW_V_3_3_PLUS else None


def retry_policy_kwargs(max_rate_limit_delay: timedelta = MAX_RATE_LIMIT_DELAY) -> dict[str, Any]:
    """``{"retry_policy": <policy>}`` on Airflow 3.3+, ``{}`` before: for any operator, any line."""
    policy = stablecog_retry_policy(max_rate_limit_delay)
    return {"retry_policy": policy} if policy is not None else {}


__all__ = [
    "StablecogTaskRetryPolicy",
    "retry_policy_kwargs",
    "stablecog_error",
    "stablecog_retry_policy",
]
