"""StablecogCreditsSensor: wait until the account has the credits a batch needs.

Put it in front of a fan-out so a credit-aware pipeline never starts a batch it cannot finish::

    wait = StablecogCreditsSensor(task_id="wait_for_credits", inputs=list_images.output,
                                  destination="s3://bucket/upscaled", reserve=10)
    wait >> UpscaleOperator(task_id="upscale", inputs=list_images.output, ...)

The requirement is a fixed ``min_credits``, or derived from ``inputs`` (an upscale: one credit per
unique valid item) or from ``prompts`` (a generation: Σ ``num_outputs`` over the unique valid
prompts, with ``generation_defaults`` as the generate operator's own parameters), minus the items
a ``destination``'s ledger records as already paid for. ``reserve`` is added on top; ``max_credits``
(the gated task's budget) caps it. The sensor's XCom value is the remaining credits seen by the
successful check; with ``inputs`` it also pushes ``credit_plan`` (``{"remaining", "needed",
"reserve"}``), which the chunks of a fan-out take as
``UpscaleOperator(credit_plan=XComArg(sensor, key="credit_plan"))`` to keep the reserve together
(:mod:`airflow_provider_stablecog.fanout`).

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
from airflow_provider_stablecog.hooks import DEFAULT_CONN_ID
from airflow_provider_stablecog.utils.inputs import as_count

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_stablecog.hooks.stablecog import StablecogHook

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


class StablecogCreditsSensor(BaseSensorOperator):
    """Wait until the Stablecog account has enough credits for a batch.

    Give exactly one of ``min_credits``, ``inputs`` or ``prompts``.

    :param stablecog_conn_id: the Stablecog connection, default ``stablecog_default``.
    :param min_credits: credits needed (templated).
    :param inputs: the batch (templated; a list, one string, or an XComArg): needs one credit per
        unique valid item. Invalid items need none (they are never sent).
    :param prompts: the prompts of a generation (templated; as
        :class:`~airflow_provider_stablecog.operators.generate.StablecogGenerateOperator` takes
        them): needs Σ ``num_outputs`` over the unique valid prompts.
    :param generation_defaults: with ``prompts``: the generate operator's parameters
        (``num_outputs``, ``width``, ``model_id``, ...), so the sizing matches its plan. Templated.
    :param destination: the destination of the upscale or generate task (templated, with ``inputs``
        or ``prompts``); items its ledger records as paid for (with a result URL) need no credit.
    :param reserve: credits to keep on top of the requirement (templated int >= 0, default 0).
    :param max_credits: the budget of the task this sensor gates (its ``max_credits``, templated):
        that task never spends more, so the requirement is capped at it (the log says so).
    :param deferrable: wait in the triggerer instead of a worker slot; the default comes from
        ``[operators] default_deferrable``.
    :param poke_interval: seconds between checks (default 60; credits polling shares the per-IP
        rate limit with the upscales).
    :param kwargs: the other BaseSensorOperator arguments (``timeout``, ``mode``, ``soft_fail``,
        ``exponential_backoff``, ...).
    """

    template_fields: Sequence[str] = (
        "min_credits",
        "inputs",
        "prompts",
        "generation_defaults",
        "destination",
        "reserve",
        "max_credits",
    )
    ui_color = "#dbe7ff"

    def __init__(
        self,
        *,
        stablecog_conn_id: str = DEFAULT_CONN_ID,
        min_credits: int | str | None = None,
        inputs: Any = None,
        prompts: Any = None,
        generation_defaults: dict[str, Any] | None = None,
        destination: Any = None,
        reserve: int | str = 0,
        max_credits: int | str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: timedelta | float = DEFAULT_POKE_INTERVAL,
        **kwargs: Any,
    ) -> None:
        from airflow_provider_stablecog.compat import drop_unsupported_arguments

        super().__init__(poke_interval=poke_interval, **drop_unsupported_arguments(kwargs))
        given = [
            n
            for n, v in (("min_credits", min_credits), ("inputs", inputs), ("prompts", prompts))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"StablecogCreditsSensor {self.task_id!r}: pass exactly one of min_credits (a number "
                "of credits), inputs (an upscale batch, one credit per unique item) or prompts (a "
                f"generation, num_outputs credits per unique prompt); "
                + (f"both {' and '.join(given)} were given" if given else "neither was given")
            )
        if destination is not None and inputs is None and prompts is None:
            raise ValueError(
                f"StablecogCreditsSensor {self.task_id!r}: destination is only used with inputs or prompts "
                "(to skip items already done there); remove it or pass inputs/prompts instead of min_credits"
            )
        if generation_defaults is not None:
            from airflow_provider_stablecog.utils.prompts import check_defaults

            if prompts is None:
                raise ValueError(
                    f"StablecogCreditsSensor {self.task_id!r}: generation_defaults needs prompts"
                )
            check_defaults(generation_defaults)
        # literal values are checked now; templates are checked once rendered (in poke/execute)
        for name, value in (("min_credits", min_credits), ("reserve", reserve), ("max_credits", max_credits)):
            if value is not None and not isinstance(value, str):
                as_count(value, name)
        self.stablecog_conn_id = stablecog_conn_id
        self.min_credits = min_credits
        self.inputs = inputs
        self.prompts = prompts
        self.generation_defaults = dict(generation_defaults or {})
        self.destination = destination
        self.reserve = reserve
        self.max_credits = max_credits
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
            reserve = as_count(self.reserve, "reserve")
            if self.prompts is not None:
                requirement = self._requirement_from_prompts(reserve)
            elif self.inputs is None:
                needed = as_count(self.min_credits, "min_credits")
                requirement = CreditRequirement(needed, reserve, f"min_credits={needed}")
            else:
                requirement = self._requirement_from_inputs(reserve)
            if self.max_credits is None:
                return requirement
            budget = as_count(self.max_credits, "max_credits")
        except (StablecogConfigError, ValueError) as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from None
        if requirement.needed <= budget:
            return CreditRequirement(
                requirement.needed, reserve, f"{requirement.detail}; within max_credits={budget}"
            )
        return CreditRequirement(
            budget,
            reserve,
            f"{requirement.detail}; {requirement.needed} needed, capped at max_credits={budget} "
            "(the task spends no more and leaves the rest not started)",
        )

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

    def _requirement_from_prompts(self, reserve: int) -> CreditRequirement:
        """Credits the generation of ``prompts`` into ``destination`` needs: the engine's own plan
        with the generation job kind (Σ num_outputs; nothing for prompts already paid there or
        invalid)."""
        from airflow_provider_stablecog.batch import BatchOptions, UpscaleBatch
        from airflow_provider_stablecog.jobs import GenerateJob
        from airflow_provider_stablecog.utils.prompts import coerce_prompt_list, plan_prompts
        from airflow_provider_stablecog.utils.storage import resolve_destination

        prompts = coerce_prompt_list(self.prompts)
        plan = plan_prompts(
            prompts,
            self.generation_defaults,
            self.hook.list_generation_models(),
            self.hook.get_generation_defaults(),
        )
        destination = self.destination
        if isinstance(destination, str) and not destination.strip():
            destination = None
        batch = UpscaleBatch(
            self.hook.client,
            plan,
            BatchOptions(),
            destination=resolve_destination(destination) if destination is not None else None,
            log=self.log,
            kind=GenerateJob(),
        )
        todo = batch.plan()
        detail = (
            f"{len(prompts)} prompts: {len(plan.unique)} unique valid, {len(plan.invalid) + len(todo.preflight_failed)} "
            f"invalid (free), {len(todo.skipped) + len(todo.to_download)} already paid in the destination"
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
                reserve = as_count(self.reserve, "reserve")
                self._push_credit_plan(context, remaining, max(0, required - reserve), reserve)
            return remaining
        if status == "timeout":
            raise AirflowSensorTimeout(message or f"{self.task_id}: timed out waiting for Stablecog credits")
        if event.get("fatal"):
            raise AirflowFailException(message)  # retrying cannot help (bad key, bad connection)
        raise AirflowException(message or f"{self.task_id}: StablecogCreditsTrigger failed")
