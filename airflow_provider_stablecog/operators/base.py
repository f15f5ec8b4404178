"""What the Stablecog batch operators share: the hook, the balance, the destination, the summary,
the failure policy and the XCom records.

:class:`~airflow_provider_stablecog.operators.upscale.UpscaleOperator` and
:class:`~airflow_provider_stablecog.operators.generate.StablecogGenerateOperator` both run the
batch engine (:mod:`airflow_provider_stablecog.batch`); only what they send differs.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_stablecog.hooks import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_stablecog.batch import BatchPlan, BatchReport
    from airflow_provider_stablecog.hooks.stablecog import StablecogHook
    from airflow_provider_stablecog.ledger import Ledger

MAX_ERRORS_SHOWN = 5


class StablecogBatchOperator(BaseOperator):
    """The shared part of the batch operators (not used on its own).

    Its ``__init__`` takes the arguments every batch operator has (documented on each operator);
    a subclass takes its own, passes the rest on, sets its fields and then calls
    :func:`validate_static`. Its :meth:`execute` runs every batch the same way; a subclass says
    what differs: its items (``_plan_items``, ``_batch_label``), its engine options and job kind
    (``_batch_options``, ``_job_kind``, ``_before_run``), its lines in the log and the dry run
    (``_log_start``, ``_dry_run_head``) and any XCom beside ``summary`` (``_push_xcoms``).
    """

    #: what the items are called in logs and messages
    unit = "images"
    #: the name of the outlet Asset added for a literal destination: ``<prefix>:<uri>``
    asset_name_prefix = "stablecog-upscaled"

    stablecog_conn_id: str
    destination: Any
    max_concurrency: int | None
    rate_limit: float | None
    credit_reserve: int
    max_credits: int | str | None = None
    max_failed_ratio: float
    fail_on_not_started: bool
    _stop: threading.Event | None = None

    def __init__(
        self,
        *,
        destination: Any = None,
        model_id: str | None = None,
        stablecog_conn_id: str = DEFAULT_CONN_ID,
        max_concurrency: int | None = None,
        rate_limit: float | None = None,
        credit_reserve: int = 0,
        max_credits: int | str | None = None,
        max_failed_ratio: float = 0.0,
        fail_on_not_started: bool = True,
        dry_run: bool = False,
        resend_possibly_charged: bool = True,
        progress_interval: float = 10.0,
        emit_asset: bool = True,
        **kwargs: Any,
    ) -> None:
        from airflow_provider_stablecog.compat import drop_unsupported_arguments

        if kwargs.get("map_index_template") is None:
            kwargs["map_index_template"] = "{{ stablecog_batch_label }}"
        super().__init__(**drop_unsupported_arguments(kwargs))
        self.destination = destination
        self.model_id = model_id
        self.stablecog_conn_id = stablecog_conn_id
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.credit_reserve = credit_reserve
        self.max_credits = max_credits
        self.max_failed_ratio = max_failed_ratio
        self.fail_on_not_started = fail_on_not_started
        self.plan_only = dry_run  # not ``self.dry_run``: that would shadow BaseOperator.dry_run()
        self.resend_possibly_charged = resend_possibly_charged
        self.progress_interval = progress_interval
        self._stop = None  # made in execute: a lock cannot be deep-copied
        #: the last execute's spend and outcome (also pushed as the ``summary`` XCom)
        self.summary: dict[str, Any] = {}
        if emit_asset and isinstance(destination, str) and "{{" not in destination:
            self._add_destination_asset(destination)

    def _add_destination_asset(self, destination: str) -> None:
        from airflow.sdk import Asset

        from airflow_provider_stablecog.utils.storage import resolve_destination

        uri = str(resolve_destination(destination)).rstrip("/")
        if not any(getattr(o, "uri", None) == uri for o in self.outlets):
            self.outlets = [*self.outlets, Asset(uri=uri, name=f"{self.asset_name_prefix}:{uri}")]

    @cached_property
    def hook(self) -> StablecogHook:
        from airflow_provider_stablecog.hooks.stablecog import StablecogHook  # the client, at run time only

        return StablecogHook(self.stablecog_conn_id, rate_limit=self.rate_limit)

    def on_kill(self) -> None:
        """Stop sending requests; every answer is already recorded; the batch writes its ledger segment and manifest on the way out."""
        if self._stop is not None:
            self._stop.set()
        if "hook" in self.__dict__:
            self.hook.client.cancel()

    # -- the run -------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        """Plan the items, then run the batch engine (or return the dry run's plan)."""
        from airflow_provider_stablecog.batch import BatchOptions, UpscaleBatch

        self._stop = threading.Event()
        max_credits = self._rendered_budget()
        concurrency = self._concurrency()
        # the session is made at the first request: size its pool for the threads first
        self.hook.pool_size = max(self.hook.pool_size, concurrency + 4)
        plan = self._plan_items()
        # a mapped chunk is labelled; an unmapped task renders "" (Airflow then shows no "Map Index")
        ti = context.get("ti")
        mapped = ti is None or getattr(ti, "map_index", -1) >= 0
        context["stablecog_batch_label"] = self._batch_label(plan) if mapped else ""  # type: ignore[typeddict-unknown-key]
        self._log_invalid(plan)
        options = BatchOptions(
            max_concurrency=concurrency,
            credit_reserve=self.credit_reserve,
            max_credits=max_credits,
            progress_interval=self.progress_interval,
            resend_possibly_charged=self.resend_possibly_charged,
            **self._batch_options(),
        )
        destination = self._prepare_destination()
        batch = UpscaleBatch(
            self.hook.client,
            plan,
            options,
            destination=destination,
            ledger=self._open_ledger(context, destination, max_credits),
            log=self.log,
            stop_event=self._stop,
            kind=self._job_kind(),
        )
        todo = batch.plan()
        self._before_run(options, todo, batch)
        credits = self._starting_credits() if (todo.to_upscale or self.plan_only) else None
        if self.plan_only:
            return self._dry_run_plan(plan, batch, todo, credits, self._dry_run_head(plan, todo))
        self._log_start(plan, todo, credits, concurrency)
        self._log_budget(todo)
        report = batch.run(credits)
        self.summary = self._log_summary(report, plan)
        if ti is not None:  # the spend report, for a downstream task (e.g. a cost tracker)
            ti.xcom_push(key="summary", value=self.summary)
            self._push_xcoms(ti, plan, report)
        self._emit_asset_events(context, report, destination)
        self._raise_if_incomplete(report, plan)
        return self._xcom(plan, report)

    # -- what each operator adds to the run ------------------------------------------------------

    def _plan_items(self) -> Any:
        """The rendered items as an :class:`~airflow_provider_stablecog.utils.inputs.InputPlan`."""
        raise NotImplementedError

    def _batch_label(self, plan: Any) -> str:
        """The map index label of a mapped task: how many items, the first and the last."""
        raise NotImplementedError

    def _batch_options(self) -> dict[str, Any]:
        """The operator's own :class:`~airflow_provider_stablecog.batch.BatchOptions` fields."""
        return {}

    def _job_kind(self) -> Any:
        """What is sent for each item (``None``: the upscale)."""
        return None

    def _before_run(self, options: Any, todo: BatchPlan, batch: Any) -> None:
        """A last word on the options once the plan is known (a fan-out chunk's spend limit)."""

    def _dry_run_head(self, plan: Any, todo: BatchPlan) -> dict[str, Any]:
        """The operator's own counts at the head of the dry run's result."""
        raise NotImplementedError

    def _log_start(self, plan: Any, todo: BatchPlan, credits: int | None, concurrency: int) -> None:
        raise NotImplementedError

    def _push_xcoms(self, ti: Any, plan: Any, report: BatchReport) -> None:
        """XComs beside ``summary`` and the records."""

    def _credits_line(self, credits: int | None, todo: BatchPlan) -> str:
        if credits is None:
            return "no credit needed"
        return f"{credits} credits available, {todo.credits_needed} needed, reserve {self.credit_reserve}"

    # -- steps shared by the batch operators ---------------------------------------------------

    def _rendered_budget(self) -> int | None:
        """``max_credits`` once rendered (a template renders to a string), or a clear error."""
        from airflow_provider_stablecog.exceptions import StablecogConfigError
        from airflow_provider_stablecog.utils.inputs import as_count

        if self.max_credits is None or (isinstance(self.max_credits, str) and not self.max_credits.strip()):
            return None
        try:
            return as_count(self.max_credits, "max_credits")
        except ValueError as exc:
            raise StablecogConfigError(f"{exc}; nothing was sent or charged", code="config_error") from None

    def _open_ledger(
        self, context: Context, destination: ObjectStoragePath | None, max_credits: int | None
    ) -> Ledger:
        """This task instance's ledger, owned by the task: the destination, else the state store (3.3)."""
        from airflow_provider_stablecog.compat import task_identity, task_state_store
        from airflow_provider_stablecog.ledger import Ledger

        ledger = Ledger(
            store=task_state_store(context, self.log),
            destination=destination,
            log=self.log,
            owner=task_identity(context),
        )
        if max_credits is not None and ledger.state is None and ledger.dest is None:
            self.log.warning(
                "max_credits=%d counts this try only: without a destination or the task state store "
                "(Airflow 3.3) nothing records what earlier tries spent",
                max_credits,
            )
        return ledger

    def _log_budget(self, todo: BatchPlan) -> None:
        if todo.max_credits is not None:
            self.log.info(
                "Budget: max_credits=%d, %d spent by earlier tries, %d left",
                todo.max_credits,
                todo.budget_spent,
                todo.budget_left,
            )

    def _dry_run_plan(
        self, plan: Any, batch: Any, todo: BatchPlan, credits: int | None, head: dict[str, Any]
    ) -> dict[str, Any]:
        """The dry run's result (``head``: the operator's own counts first); nothing is sent."""
        failed = [batch.results[k] for k in todo.preflight_failed]
        result = {
            "dry_run": True,
            **head,
            "already_done": len(todo.skipped) + len(todo.to_download),
            "in_flight_at_crash": len(todo.in_flight_at_crash),
            "invalid": len(plan.invalid) + len(failed),
            "credits_needed": todo.credits_needed,
            "credits_remaining": credits,
            "credit_reserve": self.credit_reserve,
            "enough_credits": credits is not None and credits - todo.credits_needed >= self.credit_reserve,
            **self._budget_plan(todo),
            "invalid_items": [b.message for b in plan.invalid[:MAX_ERRORS_SHOWN]]
            + [r.message for r in failed[:MAX_ERRORS_SHOWN]],
        }
        self.log.info("Dry run, nothing sent: %s", result)
        return result

    @staticmethod
    def _budget_plan(todo: BatchPlan) -> dict[str, Any]:
        """The dry run's view of the budget."""
        return {
            "max_credits": todo.max_credits,
            "budget_spent": todo.budget_spent,
            "budget_left": todo.budget_left,
            "within_budget": todo.budget_left is None or todo.credits_needed <= todo.budget_left,
        }

    def _starting_credits(self) -> int:
        """The balance before the batch; a rejected key fails the task without retries."""
        from airflow_provider_stablecog.compat import AirflowFailException
        from airflow_provider_stablecog.exceptions import StablecogAuthError

        try:
            return self.hook.get_credits().total_remaining_credits
        except StablecogAuthError as exc:
            raise AirflowFailException(f"{exc}. Nothing was sent or charged.") from None

    def _prepare_destination(self) -> ObjectStoragePath | None:
        from airflow_provider_stablecog.exceptions import StablecogConfigError
        from airflow_provider_stablecog.utils.storage import ensure_directory, resolve_destination

        if not self.destination:
            return None
        dest = resolve_destination(self.destination)
        ensure_directory(
            dest,
            lambda exc: StablecogConfigError(
                f"destination {str(dest)!r} is not writable ({type(exc).__name__}: {exc}); fix its "
                "permissions, free space or storage connection and retry — nothing was sent or charged",
                code="destination_not_writable",
            ),
        )
        return dest

    def _concurrency(self) -> int:
        from airflow_provider_stablecog.exceptions import StablecogConfigError

        value = self.max_concurrency if self.max_concurrency is not None else self.hook.plan_concurrency + 1
        if not isinstance(value, int) or value < 1:
            raise StablecogConfigError(f"max_concurrency must be a positive integer, got {value!r}")
        return value

    def _log_invalid(self, plan: Any) -> None:
        for bad in plan.invalid[:20]:
            self.log.warning("Invalid item: %s", bad.message)
        if len(plan.invalid) > 20:
            self.log.warning("... and %d more invalid items", len(plan.invalid) - 20)

    def _log_summary(self, report: BatchReport, plan: Any) -> dict[str, Any]:
        """Log the summary table; return it as a dict (keys in snake case), also the ``summary`` XCom."""
        counts = dict(report.counts)
        if plan.invalid:
            counts["failed"] = counts.get("failed", 0) + len(plan.invalid)
        by_code: dict[str, int] = {}
        for r in report.results.values():
            if r.error:
                by_code[r.error] = by_code.get(r.error, 0) + 1
        for b in plan.invalid:
            by_code[b.code] = by_code.get(b.code, 0) + 1
        rate = report.upscaled_now / report.elapsed if report.elapsed > 0 else 0.0
        done = report.done_status
        balance: list[tuple[str, Any]] = []
        if report.credits_start is not None:
            balance.append(("credits before", report.credits_start))
        if report.balance_measured_after is not None:
            balance.append(("credits after", report.balance_measured_after))
            if report.credits_start is not None:
                balance.append(("balance change", report.balance_measured_after - report.credits_start))
        budget: list[tuple[str, Any]] = []
        if report.max_credits is not None:
            budget = [
                ("budget max_credits", report.max_credits),
                ("budget spent", report.budget_spent),
                ("budget left", max(0, report.max_credits - report.budget_spent)),
            ]
        rows = [
            ("inputs", len(plan.positions)),
            ("unique", len(plan.unique)),
            *((status, counts.get(status, 0)) for status in (done, "skipped", "failed", "not_started")),
            ("credits charged this try", report.charged_now),
            ("credits charged earlier", report.charged_before),
            *self._adopted_rows(report),
            ("possibly double-charged", report.possibly_double_charged),
            *balance,
            *budget,
            ("max in flight", report.max_in_flight),
            ("elapsed", f"{report.elapsed:.1f} s"),
            (f"{self.unit}/s", f"{rate:.2f}"),
            *((f"error {code}", n) for code, n in sorted(by_code.items())),
        ]
        width = max(len(k) for k, _ in rows)
        self.log.info("Summary\n%s", "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
        summary = {k.replace(" ", "_").replace("-", "_").replace("/", "_per_"): v for k, v in rows}
        summary["elapsed"] = round(report.elapsed, 3)
        if report.possibly_double_charged:
            doubled = [r.input for r in report.results.values() if r.possibly_double_charged]
            self.log.warning(
                "%d request(s) may have been charged twice (sent again after an earlier try died with them in "
                "flight, or after a lost answer): %s%s. Set resend_possibly_charged=False to never resend.",
                report.possibly_double_charged,
                ", ".join(doubled[:MAX_ERRORS_SHOWN]),
                f" and {len(doubled) - MAX_ERRORS_SHOWN} more (see the manifest)"
                if len(doubled) > MAX_ERRORS_SHOWN
                else "",
            )
        return summary

    def _emit_asset_events(
        self, context: Context, report: BatchReport, destination: ObjectStoragePath | None
    ) -> None:
        from airflow.sdk import Asset

        extra = {
            "destination": str(destination) if destination is not None else None,
            report.done_status: report.counts.get(report.done_status, 0),
            "skipped": report.counts.get("skipped", 0),
            "failed": report.counts.get("failed", 0),
        }
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update(extra)

    def _raise_if_incomplete(self, report: BatchReport, plan: Any) -> None:
        from airflow_provider_stablecog.compat import AirflowException, AirflowFailException
        from airflow_provider_stablecog.exceptions import StablecogAuthError, StablecogBudgetExceededError

        failed = [r for r in report.results.values() if r.status == "failed"]
        messages = [b.message for b in plan.invalid] + [r.message or r.error or "" for r in failed]
        failed_positions = sum(
            1 for p in plan.positions if not isinstance(p, str) or report.result_for(p).status == "failed"
        )
        failed_share = failed_positions / max(len(plan.positions), 1)
        not_started = [r for r in report.results.values() if r.status == "not_started"]
        if report.stopped:
            raise AirflowException(
                f"Stopped with {len(not_started)} {self.unit} not done; every answer is recorded, a retry resumes"
            )
        if isinstance(report.fatal, StablecogAuthError):
            raise AirflowFailException(
                f"{report.fatal}. Finished {self.unit} are kept ({report.upscaled_now} this try)."
            )
        if not_started and self.fail_on_not_started and all(r.error == "max_credits" for r in not_started):
            # a retry would start nothing either: fail at once (on every Airflow line)
            raise AirflowFailException(
                f"{len(not_started)} of {len(plan.unique)} {self.unit} were not started: max_credits={report.max_credits} "
                f"is spent ({report.budget_spent} credits across this task's tries). Raise max_credits and clear "
                "the task to finish them; nothing done is paid again"
            ) from StablecogBudgetExceededError(not_started[0].message or "", code="max_credits")
        if not_started and self.fail_on_not_started:
            raise AirflowException(
                f"{len(not_started)} of {len(plan.unique)} {self.unit} were not started: {not_started[0].message}"
            )
        if failed_share > self.max_failed_ratio:
            shown = "\n  ".join(messages[:MAX_ERRORS_SHOWN])
            more = (
                f"\n  ... and {len(messages) - MAX_ERRORS_SHOWN} more (see the manifest)"
                if len(messages) > MAX_ERRORS_SHOWN
                else ""
            )
            head = f"{failed_positions} of {len(plan.positions)} inputs failed ({failed_share:.1%} > max_failed_ratio={self.max_failed_ratio:.1%})"
            if not not_started and all(r.key in report.permanent_failures for r in failed):
                # only bad items are left: an Airflow retry would fail them again, for nothing
                raise AirflowFailException(
                    f"{head}; every failure is a bad item that a retry cannot fix (fix the items upstream, "
                    f"then clear the task: the rest is done and not paid again):\n  {shown}{more}"
                )
            raise AirflowException(
                f"{head}; the rest are done and a retry redoes only the failures:\n  {shown}{more}"
            )

    def _xcom(self, plan: Any, report: BatchReport) -> list[dict[str, Any]]:
        """One compact record per input, in input order (empty fields left out)."""
        out: list[dict[str, Any]] = []
        for entry in plan.positions:
            if isinstance(entry, str):
                out.append(report.result_for(entry).xcom())
            else:
                out.append({"input": entry.display, "status": "failed", "error": entry.code})
        return out

    @staticmethod
    def _adopted_rows(report: BatchReport) -> list[tuple[str, Any]]:
        """Lost answers found again in the outputs listing (only when there were any)."""
        if not report.adopted:
            return []
        return [
            ("adopted", report.adopted),
            ("credits adopted from earlier tries", report.adopted_credits_earlier),
        ]


def validate_static(op: StablecogBatchOperator) -> None:
    """Check the non-templated arguments early (at DAG parse)."""
    if op.max_concurrency is not None and (not isinstance(op.max_concurrency, int) or op.max_concurrency < 1):
        raise ValueError(f"max_concurrency must be a positive integer, got {op.max_concurrency!r}")
    if not isinstance(op.credit_reserve, int) or op.credit_reserve < 0:
        raise ValueError(f"credit_reserve must be an integer >= 0, got {op.credit_reserve!r}")
    if op.max_credits is not None and not (isinstance(op.max_credits, str) and "{{" in op.max_credits):
        from airflow_provider_stablecog.utils.inputs import as_count

        as_count(op.max_credits, "max_credits")  # a template is checked once rendered
    if not 0.0 <= float(op.max_failed_ratio) <= 1.0:
        raise ValueError(f"max_failed_ratio must be between 0.0 and 1.0, got {op.max_failed_ratio!r}")
    if op.rate_limit is not None and op.rate_limit < 0:
        raise ValueError(f"rate_limit must be >= 0 requests/s, got {op.rate_limit!r}")
