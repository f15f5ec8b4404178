"""UpscaleOperator: upscale every image listed in XCom, concurrently, credit-aware and resumable.

Example::

    from airflow_provider_stablecog.operators.upscale import UpscaleOperator

    UpscaleOperator(
        task_id="upscale",
        inputs=list_images.output,           # URLs, output IDs, s3:// upload keys, files
        destination="s3://my-bucket/upscaled/{{ ds }}/",
        credit_reserve=50,
    )

See :mod:`airflow_provider_stablecog.utils.inputs` for how each item is classified and
:mod:`airflow_provider_stablecog.batch` for how the batch runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_stablecog.operators.base import (
    StablecogBatchOperator,
    validate_static,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_stablecog.utils.inputs import InputPlan


class UpscaleOperator(StablecogBatchOperator):
    """Upscale images 4× with Stablecog (1 credit each).

    :param inputs: a list (or one string) of image URLs, Stablecog output IDs, ``s3://`` upload
        keys, local paths / ``file://`` URLs or object-storage paths; usually an XComArg
        (``inputs=upstream.output``). Templated. Duplicates are upscaled once.
    :param destination: where to write the upscaled images and ``manifest.jsonl``: a local path
        or any ObjectStoragePath URL (``s3://bucket/prefix``). Templated. Without it nothing is
        downloaded and the XCom holds the result URLs.
    :param model_id: an upscale model UUID; default: the server's default model. Templated.
    :param stablecog_conn_id: the Stablecog connection.
    :param max_concurrency: upscales in flight at once; default: the connection's plan
        concurrency + 1 (the server runs one more than the plan and holds the rest).
    :param rate_limit: requests/s for this task; default: the connection's ``rate_limit`` extra.
    :param credit_reserve: never start an upscale that could take the balance below this.
    :param max_credits: a budget: the most this task may spend **across all its tries** (retries
        and clears of the same task instance). What earlier tries spent is read from the ledger
        (the destination, or the state store without one), so a retry cannot reset it; requests
        that may have been charged without an answer count as spent. Items past the budget are left
        ``not_started`` (code ``max_credits``) and the task fails without retrying; the summary
        shows budget, spent and left. ``None`` (default): no budget. Templated (e.g. the credits
        a human approved: ``"{{ ti.xcom_pull(task_ids='price')['credits_needed'] }}"``).
    :param max_failed_ratio: the share of items that may fail before the task fails (0.0: any
        failure fails the task, after every item was tried and the manifest saved).
    :param fail_on_not_started: fail the task when items could not be started (no credits,
        reserve reached, a fatal error), so a retry after a top-up finishes them. Default True.
    :param dry_run: send no upscale; log and return the plan (to do, already done, invalid,
        credits needed vs. remaining and vs. ``max_credits``).
    :param resend_possibly_charged: what to do with an item whose request may have been charged
        without an answer: in flight when an earlier try died (SIGKILL, OOM, ``execution_timeout``)
        or its answer lost (connection reset, read timeout). ``True`` (default) sends it again, so
        every image is delivered, at the risk of paying for it twice; each such resend is counted
        as "possibly double-charged" in the log summary, the manifest and the XCom record.
        ``False`` never risks a second charge: the item is left ``not_started`` / ``failed`` with
        the code ``possibly_charged`` / ``response_lost`` for you to check in Stablecog.
    :param downscale_oversized: downscale local/object-storage images over 1,048,576 pixels or
        10 MiB to fit instead of failing them.
    :param progress_interval: seconds between progress lines in the task log.
    :param emit_asset: when ``destination`` is a literal (not templated) path, add it as an
        outlet Asset so downstream DAGs can be scheduled on it. Any Asset outlet gets the batch
        totals as its event's ``extra``.
    :param credit_plan: for a chunk of a fan-out: the credits sensor's ``credit_plan`` XCom for
        the whole list (``XComArg(sensor, key="credit_plan")``; templated). Each try then sends at
        most its share of the account (:mod:`airflow_provider_stablecog.fanout`), so chunks running
        at once on any number of workers keep the sensor's ``reserve`` together.
    """

    template_fields: Sequence[str] = ("inputs", "destination", "model_id", "max_credits", "credit_plan")
    template_fields_renderers = {"inputs": "json"}  # noqa: RUF012 -- Airflow reads it from the class
    ui_color = "#d8c8f0"

    def __init__(
        self,
        *,
        inputs: Any,
        destination: str | ObjectStoragePath | None = None,
        downscale_oversized: bool = False,
        credit_plan: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(destination=destination, **kwargs)
        self.inputs = inputs
        self.downscale_oversized = downscale_oversized
        self.credit_plan = credit_plan
        validate_static(self)

    # -- execute -----------------------------------------------------------------------------------

    def _plan_items(self) -> InputPlan:
        from airflow_provider_stablecog.utils.inputs import coerce_input_list, plan_inputs

        return plan_inputs(coerce_input_list(self.inputs))

    def _batch_label(self, plan: InputPlan) -> str:
        n = len(plan.positions)
        if not n:
            return "0 images"
        first, last = plan.display_for(0), plan.display_for(n - 1)
        tail = lambda s: s.rstrip("/").rsplit("/", 1)[-1][:40]  # noqa: E731
        return f"{n} images: {tail(first)}" + (f" … {tail(last)}" if n > 1 else "")

    def _batch_options(self) -> dict[str, Any]:
        return {"model_id": self._checked_model_id(), "downscale_oversized": self.downscale_oversized}

    def _before_run(self, options: Any, todo: Any, batch: Any) -> None:
        self._apply_credit_plan(options, todo, batch)

    def _dry_run_head(self, plan: InputPlan, todo: Any) -> dict[str, Any]:
        return {
            "inputs": len(plan.positions),
            "unique": len(plan.unique),
            "to_upscale": len(todo.to_upscale),
            "free": len(todo.free),
        }

    def _log_start(self, plan: InputPlan, todo: Any, credits: int | None, concurrency: int) -> None:
        self.log.info(
            "Upscaling %d unique images (%d inputs, %d already done, %d to download again, %d invalid, "
            "%d free, %d in flight when an earlier try ended) with %d in flight; %s",
            len(todo.to_upscale),
            len(plan.positions),
            len(todo.skipped),
            len(todo.to_download),
            len(plan.invalid) + len(todo.preflight_failed),
            len(todo.free),
            len(todo.in_flight_at_crash),
            concurrency,
            self._credits_line(credits, todo),
        )

    # -- steps ---------------------------------------------------------------------------------------

    def _apply_credit_plan(self, options: Any, todo: Any, batch: Any) -> None:
        """A fan-out chunk: cap this try's paid requests at its share (``fanout.CreditPlan``)."""
        from airflow_provider_stablecog.exceptions import StablecogConfigError
        from airflow_provider_stablecog.fanout import CreditPlan

        if self.credit_plan is None:
            return
        try:
            plan = CreditPlan.from_value(self.credit_plan)
        except ValueError as exc:
            raise StablecogConfigError(str(exc), code="invalid_credit_plan") from None
        doubled = sum(r.possibly_double_charged for r in batch.results.values())
        crashed = len(todo.in_flight_at_crash)
        options.spend_limit = plan.spend_limit(todo.credits_needed, crashed, doubled)
        self.log.info(
            "Fan-out credit plan: the list needs %d credits, %d were seen, reserve %d (headroom %d); this "
            "chunk needs %d, %d maybe charged by an earlier try, %d possibly double-charged: it may send "
            "%d paid requests this try",
            plan.needed,
            plan.remaining,
            plan.reserve,
            plan.headroom,
            todo.credits_needed,
            crashed,
            doubled,
            options.spend_limit,
        )

    def _checked_model_id(self) -> str | None:
        from airflow_provider_stablecog.exceptions import StablecogConfigError, StablecogRetryableError
        from airflow_provider_stablecog.utils.inputs import is_uuid

        if not self.model_id:
            return None
        model_id = str(self.model_id).strip()
        if not is_uuid(model_id):
            raise StablecogConfigError(
                f"model_id {model_id!r} is not a UUID (the server would answer json_parse_error); "
                "list models with StablecogHook().list_upscale_models() or leave model_id unset",
                code="json_parse_error",
            )
        try:
            known = {m.id.lower(): m.name for m in self.hook.list_upscale_models()}
        except StablecogRetryableError as exc:
            self.log.warning("Could not list upscale models (%s); sending model_id unchecked", exc.code)
            return model_id
        if known and model_id.lower() not in known:
            raise StablecogConfigError(
                f"model_id {model_id!r} is not one of the upscale models ({', '.join(f'{n} {i}' for i, n in known.items())}); "
                "fix model_id or leave it unset for the default",
                code="invalid_model_id",
            )
        return model_id
