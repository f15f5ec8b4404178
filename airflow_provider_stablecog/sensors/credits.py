"""StablecogCreditsSensor: wait until the account has the credits a batch needs.

Put it in front of a fan-out so a credit-aware pipeline never starts a batch it cannot finish::

    wait = StablecogCreditsSensor(task_id="wait_for_credits", inputs=list_images.output,
                                  destination="s3://bucket/upscaled", reserve=10)
    wait >> UpscaleOperator(task_id="upscale", inputs=list_images.output, ...)

The requirement is either a fixed ``min_credits`` or derived from ``inputs``: one credit per unique
valid item, minus the items a ``destination``'s manifest records as already paid for. ``reserve``
is added on top. The sensor's XCom value is the remaining credits seen by the successful check;
with ``inputs`` it also pushes ``credit_plan`` (``{"remaining", "needed", "reserve"}``), which the
chunks of a fan-out take as ``UpscaleOperator(credit_plan=XComArg(sensor, key="credit_plan"))`` to
keep the reserve together (:mod:`airflow_provider_stablecog.fanout`).

``/v1/credits`` shares the per-IP rate budget with the upscales, so poll sparingly (the default
``poke_interval`` is 60 s) or defer (``deferrable=True``) to free the worker slot.

Every mode runs Airflow's own sensor loop (``BaseSensorOperator.execute``), so ``soft_fail``,
``never_fail``, ``silent_fail``, ``timeout`` and ``exponential_backoff`` are Airflow's; with
``deferrable=True`` the first poke that is not enough defers to :class:`StablecogCreditsTrigger`,
and Airflow's ``resume_execution`` applies ``soft_fail``/``never_fail`` to the trigger's outcome.
The poke and the trigger read the balance through the same hook and client and classify failures
the same way (:func:`~airflow_provider_stablecog.hooks.stablecog.classify_credits_error`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_stablecog.compat import conf

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_stablecog.hooks.stablecog import StablecogHook

DEFAULT_CONN_ID = "stablecog_default"
DEFAULT_POKE_INTERVAL = 60.0
EVENT_STATUSES = ("success", "timeout", "error")


@dataclass(frozen=True)
class CreditRequirement:
    """What one check compares the balance with: ``needed + reserve``."""

    needed: int
    reserve: int
    detail: str

    @property
    def total(self) -> int:
        return self.needed + self.reserve


def _as_count(value: Any, name: str) -> int:
    """A rendered template value → a non-negative int, or a ValueError that says what to do."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())  # templates render to strings unless render_template_as_native_obj
    if number is None:
        raise ValueError(
            f"{name} must be a whole number of credits (an int >= 0), got {value!r} "
            f"({type(value).__name__}); fix the argument or the template that renders it"
        )
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}; pass 0 or a positive number of credits")
    return number


class StablecogCreditsSensor(BaseSensorOperator):
    """Wait until the Stablecog account has enough credits for a batch.

    Give exactly one of ``min_credits`` or ``inputs``.

    :param stablecog_conn_id: the Stablecog connection, default ``stablecog_default``.
    :param min_credits: credits needed (templated).
    :param inputs: the batch (templated; a list, one string, or an XComArg): needs one credit per
        unique valid item. Invalid items need none (they are never sent).
    :param destination: the destination of the upscale task (templated, only with ``inputs``);
        items its ``manifest.jsonl`` records as paid for (with a result URL) need no credit.
    :param reserve: credits to keep on top of the requirement (templated int >= 0, default 0).
    :param deferrable: wait in the triggerer instead of a worker slot; the default comes from
        ``[operators] default_deferrable``.
    :param poke_interval: seconds between checks (default 60; credits polling shares the per-IP
        rate limit with the upscales).
    :param kwargs: the other BaseSensorOperator arguments (``timeout``, ``mode``, ``soft_fail``,
        ``exponential_backoff``, ...).
    """

    template_fields: Sequence[str] = ("min_credits", "inputs", "destination", "reserve")
    ui_color = "#dbe7ff"

    def __init__(
        self,
        *,
        stablecog_conn_id: str = DEFAULT_CONN_ID,
        min_credits: int | str | None = None,
        inputs: Any = None,
        destination: Any = None,
        reserve: int | str = 0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: timedelta | float = DEFAULT_POKE_INTERVAL,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        if (min_credits is None) == (inputs is None):
            given = "both" if min_credits is not None else "neither"
            raise ValueError(
                f"StablecogCreditsSensor {self.task_id!r}: pass exactly one of min_credits (a number "
                f"of credits) or inputs (the batch, one credit per unique item); {given} was given"
            )
        if destination is not None and inputs is None:
            raise ValueError(
                f"StablecogCreditsSensor {self.task_id!r}: destination is only used with inputs (to skip "
                "items already upscaled there); remove it or pass inputs instead of min_credits"
            )
        # literal values are checked now; templates are checked once rendered (in poke/execute)
        for name, value in (("min_credits", min_credits), ("reserve", reserve)):
            if value is not None and not isinstance(value, str):
                _as_count(value, name)
        self.stablecog_conn_id = stablecog_conn_id
        self.min_credits = min_credits
        self.inputs = inputs
        self.destination = destination
        self.reserve = reserve
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> StablecogHook:
        from airflow_provider_stablecog.hooks.stablecog import StablecogHook

        # one poke is one request: the sensor polls again anyway, so no retries (not even of a 429)
        # inside it; the trigger builds the same hook
        return StablecogHook(stablecog_conn_id=self.stablecog_conn_id, max_retries=0, rate_limit_budget=0)

    # -- the requirement -----------------------------------------------------------------------

    def requirement(self) -> CreditRequirement:
        """The credits the batch needs, from the rendered arguments.

        :raises AirflowFailException: a rendered value is unusable (retrying will not fix it).
        """
        from airflow_provider_stablecog.compat import AirflowFailException
        from airflow_provider_stablecog.exceptions import StablecogConfigError

        try:
            reserve = _as_count(self.reserve, "reserve")
            if self.inputs is None:
                needed = _as_count(self.min_credits, "min_credits")
                return CreditRequirement(needed, reserve, f"min_credits={needed}")
            return self._requirement_from_inputs(reserve)
        except (StablecogConfigError, ValueError) as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from None

    def _requirement_from_inputs(self, reserve: int) -> CreditRequirement:
        """Credits the upscale of ``inputs`` into ``destination`` needs: the engine's own plan.

        The same function as the operator and its dry run (:meth:`UpscaleBatch.plan
        <airflow_provider_stablecog.batch.UpscaleBatch.plan>`): nothing for items already paid at
        the destination, output IDs already upscaled (free), invalid items and local files that
        fail the pre-check.
        """
        from airflow_provider_stablecog.batch import BatchOptions, UpscaleBatch
        from airflow_provider_stablecog.utils.inputs import coerce_input_list, plan_inputs
        from airflow_provider_stablecog.utils.storage import resolve_destination

        items = coerce_input_list(self.inputs)
        plan = plan_inputs(items)
        destination = self.destination
        if isinstance(destination, str) and not destination.strip():
            destination = None  # a template that rendered empty: no destination, nothing is done yet
        batch = UpscaleBatch(
            self.hook.client,
            plan,
            BatchOptions(model_id=getattr(self, "model_id", None) or None),
            destination=resolve_destination(destination) if destination is not None else None,
            log=self.log,
        )
        todo = batch.plan()
        detail = (
            f"{len(items)} inputs: {len(plan.unique)} unique valid, {len(plan.invalid) + len(todo.preflight_failed)} "
            f"invalid (free), {len(todo.skipped) + len(todo.to_download)} already paid in the destination, "
            f"{len(todo.free)} already upscaled output IDs (free)"
        )
        return CreditRequirement(todo.credits_needed, reserve, detail)

    # -- one check -------------------------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue:
        """One ``/v1/credits`` call; done when ``remaining >= needed + reserve``.

        With ``deferrable=True`` a check that is not enough defers to the trigger (raises
        ``TaskDeferred``) instead of returning.
        """
        requirement = self.requirement()
        result = self.check(requirement)
        if self.deferrable and not result.is_done:
            self._defer(requirement)
        if result.is_done:
            self._push_credit_plan(context, result.xcom_value, requirement.needed, requirement.reserve)
        return result

    def _push_credit_plan(self, context: Context, remaining: Any, needed: int, reserve: int) -> None:
        """With ``inputs``: the ``credit_plan`` XCom a fan-out's chunks share the account by."""
        from airflow_provider_stablecog.fanout import CreditPlan

        ti = context.get("ti")
        if self.inputs is None or ti is None or not isinstance(remaining, int):
            return
        ti.xcom_push(key="credit_plan", value=CreditPlan(remaining, needed, reserve).as_dict())

    def check(self, requirement: CreditRequirement) -> PokeReturnValue:
        """Compare the balance with ``requirement``; XCom value = the remaining credits.

        A transient failure (429, 5xx, connection error, an answer that is not JSON) is not done
        yet; anything else that is not fatal is raised.

        :raises AirflowFailException: the API key was rejected (401/403) or the connection is wrong.
        """
        from airflow_provider_stablecog.compat import AirflowFailException
        from airflow_provider_stablecog.exceptions import StablecogAuthError
        from airflow_provider_stablecog.hooks.stablecog import classify_credits_error

        try:
            remaining = self.hook.get_credits().total_remaining_credits
        except Exception as exc:
            kind = classify_credits_error(exc)
            if kind == "fatal" and isinstance(exc, StablecogAuthError):
                raise AirflowFailException(
                    f"Stablecog rejected the API key of connection {self.stablecog_conn_id!r}: {exc}. "
                    "Waiting will not fix a bad key: fix the connection, then clear this task."
                ) from None
            if kind == "fatal":
                raise AirflowFailException(
                    f"Connection {self.stablecog_conn_id!r} is not usable: {exc}"
                ) from None
            if kind == "error":
                raise
            self.log.warning("Could not read the Stablecog credits (will check again): %s", exc)
            return PokeReturnValue(is_done=False)
        done = remaining >= requirement.total
        self.log.info(
            "Stablecog credits: %d remaining, %d needed (%d for the batch + %d reserve; %s) -> %s",
            remaining,
            requirement.total,
            requirement.needed,
            requirement.reserve,
            requirement.detail,
            "enough" if done else f"short by {requirement.total - remaining}, waiting",
        )
        return PokeReturnValue(is_done=done, xcom_value=remaining)

    # -- execution -------------------------------------------------------------------------------

    def _defer(self, requirement: CreditRequirement) -> None:
        from airflow_provider_stablecog.triggers.credits import StablecogCreditsTrigger

        self.log.info(
            "Deferring until %d credits are available (timeout %.0f s)", requirement.total, self.timeout
        )
        self.defer(
            trigger=StablecogCreditsTrigger(
                conn_id=self.stablecog_conn_id,
                required=requirement.total,
                poke_interval=self.poke_interval or 1.0,  # 0 would hammer the shared rate budget
                end_time=time.time() + self.timeout,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> int:
        """Resume after the trigger: return the remaining credits, or fail with its message.

        ``soft_fail``/``never_fail`` turn a failure here into a skip in Airflow's own
        ``BaseSensorOperator.resume_execution``.

        :param event: the trigger's payload, ``{"status": "success"|"timeout"|"error", ...}``.
        """
        from airflow_provider_stablecog.compat import (
            AirflowException,
            AirflowFailException,
            AirflowSensorTimeout,
        )

        if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
            raise AirflowException(
                f"{self.task_id}: unexpected event from StablecogCreditsTrigger: {event!r}"
            )
        status = event["status"]
        message = str(event.get("message") or "")
        if status == "success":
            remaining = event.get("remaining_credits")
            if not isinstance(remaining, int) or isinstance(remaining, bool):
                raise AirflowException(f"{self.task_id}: success event without remaining_credits: {event!r}")
            self.log.info(
                "Stablecog credits: %d remaining, %s needed -> enough", remaining, event.get("required")
            )
            required = event.get("required")
            if isinstance(required, int) and not isinstance(required, bool):
                reserve = _as_count(self.reserve, "reserve")
                self._push_credit_plan(context, remaining, max(0, required - reserve), reserve)
            return remaining
        if status == "timeout":
            raise AirflowSensorTimeout(message or f"{self.task_id}: timed out waiting for Stablecog credits")
        if event.get("fatal"):
            raise AirflowFailException(message)  # retrying cannot help (bad key, bad connection)
        raise AirflowException(message or f"{self.task_id}: StablecogCreditsTrigger failed")
