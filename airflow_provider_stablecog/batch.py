"""The batch engine behind :class:`~airflow_provider_stablecog.operators.upscale.UpscaleOperator`
and :class:`~airflow_provider_stablecog.operators.generate.StablecogGenerateOperator`.

Its public surface is small: :meth:`UpscaleBatch.plan` (what would be done, nothing sent) and
:meth:`UpscaleBatch.run` (do it, return a :class:`BatchReport`). Everything about money goes
through :mod:`airflow_provider_stablecog.ledger`. What differs between an upscale and a generation
(how an item is sent, its cost, its outputs, how a lost answer is found again) is the batch's
job kind (:mod:`airflow_provider_stablecog.jobs`); the default is the upscale.

One coordinating thread (the caller's) decides what starts; worker threads do the I/O and make
every record durable themselves, the moment something happens: a worker records the item as
*sent* before its upscale request leaves (write-ahead), and its answer before the future
completes. A download worker records the file. So a SIGKILL at any instant leaves, in the
state store and at the destination, exactly which items were answered and which were in flight.

The coordinator starts a paid upscale only while

* fewer than ``max_concurrency`` requests are in flight,
* ``known balance − credits of paid requests in flight − its cost ≥ credit_reserve``, where the
  known balance only
  goes **down** between fresh reads of ``/v1/credits`` (answers arrive out of charge order: an
  older, higher ``remaining_credits`` never replaces a newer, lower one), and a fresh read is made
  when the floor blocks work with nothing in flight (refunds may have raised it),
* no fatal error (``insufficient_credits``, 401, 403) has been seen and no stop was requested,
* with a budget (``max_credits``): what this task may have spent — across its earlier tries (read
  from the ledger, :func:`~airflow_provider_stablecog.ledger.spent_by`), charged this try, lost
  answers that may have been charged, and paid requests in flight — plus the request's price stays
  within it,
* with ``spend_limit`` (a fan-out chunk's share of the account, :mod:`airflow_provider_stablecog.fanout`):
  the credits of paid requests sent in this try plus the request's price stay within it, so chunks
  running at once on several workers keep the reserve together.

Items known to be free (output IDs the server already upscaled) are sent regardless of balance
and reserve.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_stablecog.exceptions import (
    StablecogCancelledError,
    StablecogError,
    StablecogFatalError,
    StablecogInputError,
    StablecogResponseLostError,
    StablecogRetryableError,
)
from airflow_provider_stablecog.jobs import MAX_OUTPUT_PAGES, JobAnswer, JobKind  # noqa: F401 (kept importable)
from airflow_provider_stablecog.ledger import (
    FAILED,
    NOT_STARTED,
    SKIPPED,
    UPSCALED,
    ItemRecord,
    Ledger,
    credits_needed,
    image_name,
    item_key,
)
from airflow_provider_stablecog.utils import images, is_local
from airflow_provider_stablecog.utils.storage import AtomicWrite

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_stablecog.client import StablecogClient
    from airflow_provider_stablecog.utils.inputs import InputItem, InputPlan
    from airflow_provider_stablecog.utils.prompts import PromptPlan

STOP_GRACE_SECONDS = 5.0
# A lost answer is resent at most this many times per item (each may have been charged).
MAX_LOST_ANSWERS = 2

# kept importable for code written against provider 0.1
ItemResult = ItemRecord


@dataclass
class BatchOptions:
    model_id: str | None = None
    max_concurrency: int = 1
    credit_reserve: int = 0
    downscale_oversized: bool = False
    progress_interval: float = 10.0
    download_concurrency: int = 4
    #: resend items that were in flight when an earlier try died, or whose answer was lost
    #: (each such request may have been charged: the resend is reported as possibly double-charged)
    resend_possibly_charged: bool = True
    #: the most this task may spend across all its tries (``None``: no budget); the ledger's
    #: ``owner`` says whose earlier spend counts
    max_credits: int | None = None
    #: credits of paid requests this try may send (None: no limit); a fan-out chunk's share of the
    #: account, from :meth:`airflow_provider_stablecog.fanout.CreditPlan.spend_limit`
    spend_limit: int | None = None


@dataclass
class BatchPlan:
    """What a run would do; :meth:`UpscaleBatch.plan` makes it without sending any upscale."""

    to_upscale: list[str]
    to_download: list[str]
    skipped: list[str]
    preflight_failed: list[str]
    free: set[str]
    in_flight_at_crash: list[str]
    credits_needed: int
    charged_before: int
    #: the budget, and what this task may have spent on earlier tries (counting possible charges)
    max_credits: int | None = None
    budget_spent: int = 0

    @property
    def budget_left(self) -> int | None:
        return None if self.max_credits is None else max(0, self.max_credits - self.budget_spent)


@dataclass
class BatchReport:
    results: dict[str, ItemRecord]
    credits_start: int | None
    credits_end: int | None
    elapsed: float
    fatal: StablecogError | None = None
    stopped: bool = False
    max_in_flight: int = 0
    counts: Counter = field(default_factory=Counter)
    charged_now: int = 0
    charged_before: int = 0
    possibly_double_charged: int = 0
    in_flight_at_crash: int = 0
    balance_measured_after: int | None = None
    permanent_failures: set[str] = field(default_factory=set)
    #: an input's identity (``InputItem.key``) → its ledger key
    key_of: dict[str, str] = field(default_factory=dict)
    #: the budget, and what this task may have spent in all its tries so far, this one included
    max_credits: int | None = None
    budget_spent: int = 0
    #: the status of a finished item: ``upscaled`` or ``generated`` (the job kind's)
    done_status: str = UPSCALED
    #: lost answers (or requests in flight at a crash) found again in the outputs listing
    adopted: int = 0
    #: credits of adopted answers whose request was sent by an earlier try (charged before this one)
    adopted_credits_earlier: int = 0

    def result_for(self, identity: str) -> ItemRecord:
        return self.results[self.key_of[identity]]

    @property
    def upscaled_now(self) -> int:
        """Items finished by this try (upscaled, or generated for a generation batch)."""
        return self.counts.get(self.done_status, 0)

    def failures(self) -> list[ItemRecord]:
        return [r for r in self.results.values() if r.status == FAILED]


class UpscaleBatch:
    """One batch: ``plan()`` then ``run(credits_start)``; ``ledger`` holds what earlier tries did.

    ``kind``: the job kind (default: upscales with ``options.model_id``; a
    :class:`~airflow_provider_stablecog.jobs.GenerateJob` with a
    :class:`~airflow_provider_stablecog.utils.prompts.PromptPlan` runs generations).
    """

    def __init__(
        self,
        client: StablecogClient,
        plan: InputPlan | PromptPlan,
        options: BatchOptions,
        *,
        destination: ObjectStoragePath | None = None,
        ledger: Ledger | None = None,
        log: logging.Logger | Any | None = None,
        stop_event: threading.Event | None = None,
        kind: JobKind | None = None,
    ) -> None:
        self.client = client
        self.inputs = plan
        self.options = options
        self.kind = kind or JobKind(options.model_id)
        self.destination = destination
        self.log = log or logging.getLogger(__name__)
        self.ledger = ledger or Ledger(destination=destination, log=self.log)
        self.stop_event = stop_event or threading.Event()
        #: ledger key → the input it stands for, and the input's identity → its ledger key
        self.items: dict[str, Any] = {}
        self.key_of: dict[str, str] = {}
        for identity, item in plan.unique.items():
            key = item_key(identity, self.kind.model_of(item))
            self.items[key] = item
            self.key_of[identity] = key
        self.results: dict[str, ItemRecord] = {}
        self._uploads: dict[str, tuple[bytes | None, str]] = {}
        self._crash_pending: dict[str, list[str]] = {}
        self._lost: Counter[str] = Counter()
        self._lost_now: set[str] = set()  # keys whose answer was lost by this try (not an earlier one)
        self._adopted = self._adopted_earlier = 0
        self._permanent: set[str] = set()
        self._plan: BatchPlan | None = None
        self._lock = threading.Lock()

    # -- planning --------------------------------------------------------------------------------

    def plan(self) -> BatchPlan:
        """Read the ledger, pre-check local files, find free output IDs; send no upscale."""
        known = self.ledger.load(self.items)
        to_upscale: list[str] = []
        to_download: list[str] = []
        skipped: list[str] = []
        failed: list[str] = []
        crashed: list[str] = []
        for key, item in self.items.items():
            record = known.get(key)
            if record is None:
                record = ItemRecord(key=key, input=item.display, model_id=self.kind.model_of(item))
            else:
                record.input, record.model_id = item.display, self.kind.model_of(item)
                record.error = record.message = None
            self.kind.stamp(item, record)
            record.cost = self.kind.cost(item)  # what a request may cost: the budget counts unknowns at it
            self.results[key] = record
            if record.paid:
                outputs = len(record.output_ids) if self.kind.outputs_per_item(item) else None
                if self.destination is not None and not self.ledger.image_present(key, outputs):
                    to_download.append(key)
                else:
                    if self.destination is not None and not record.path:  # written by a try that died
                        self._found_images(record, outputs)
                    record.status = SKIPPED
                    skipped.append(key)
                continue
            if record.in_flight_at_crash:
                crashed.append(key)
                if not self.options.resend_possibly_charged:
                    record.fail(
                        NOT_STARTED,
                        "possibly_charged",
                        f"{record.input}: in flight when an earlier try ended, so it may have been charged; "
                        "not sent again because resend_possibly_charged=False. Look for it in Stablecog, or "
                        "set resend_possibly_charged=True (it may then be charged twice)",
                    )
                    continue
                self._crash_pending[key] = list(record.pending)
            record.status = NOT_STARTED
            upload = self.kind.upload_source(item)
            if upload is not None and not self._preflight_local(upload, record):
                failed.append(key)
                continue
            to_upscale.append(key)
        free, unusable = self.kind.prepare(self.client, {k: self.items[k] for k in to_upscale}, self.log)
        for key, (code, message, permanent) in unusable.items():
            if permanent:
                self._fail_permanent(self.results[key], code, message)
            else:
                self.results[key].fail(FAILED, code, message)
                self.log.warning("Not sent: %s", message)
            failed.append(key)
        to_upscale = [k for k in to_upscale if k not in unusable]
        charged_before = sum(r.credits_charged for r in self.results.values())
        self._plan = BatchPlan(
            to_upscale=to_upscale,
            to_download=to_download,
            skipped=skipped,
            preflight_failed=failed,
            free=free,
            in_flight_at_crash=crashed,
            credits_needed=credits_needed(to_upscale, known, free, self._costs(to_upscale)),
            charged_before=charged_before,
            max_credits=self.options.max_credits,
            budget_spent=self.ledger.spent_before,
        )
        if crashed:
            self.log.warning(
                "%d item(s) were in flight when an earlier try ended (they may have been charged): %s",
                len(crashed),
                "resending them; each is reported as possibly double-charged if it was"
                if self.options.resend_possibly_charged
                else "not resending them (resend_possibly_charged=False)",
            )
        return self._plan

    def _found_images(self, record: ItemRecord, outputs: int | None) -> None:
        """Paths of an item's images that a try wrote but could not record before it died (their
        size is not known without reading them back, and is left out)."""
        assert self.destination is not None
        names = [image_name(record.key, i) for i in range(outputs)] if outputs else [image_name(record.key)]
        paths = [_shown_path(self.destination / n) for n in names]
        record.path = paths[0]
        if outputs:
            record.paths = paths
        done = record.copy()  # the destination's view: done (this try reports it as skipped)
        done.status = self.kind.done_status
        self.ledger.keep(done)

    def _costs(self, keys: list[str]) -> dict[str, int]:
        """Each key's price (the job kind's: 1 per upscale, num_outputs per generation)."""
        return {k: self.kind.cost(self.items[k]) for k in keys}

    def _cost(self, key: str) -> int:
        return 0 if self._is_free(key) else self.kind.cost(self.items[key])

    def _preflight_local(self, item: InputItem, result: ItemRecord) -> bool:
        """Check a file to upload with Pillow; remember downscaled bytes when allowed."""
        try:
            path = _open_source(item)
            size = path.stat().st_size
            if not path.is_file():
                raise images.ImageCheckError("not_a_file", "not a file (a directory?); pass image files only")
            with path.open("rb") as fh:
                info = images.inspect_image(fh, size)
            try:
                images.check_limits(info)
                self._uploads[result.key] = (None, info.content_type)
            except images.ImageCheckError:
                if not self.options.downscale_oversized:
                    raise
                with path.open("rb") as fh:
                    data, fitted = images.fit_within_limits(fh)
                self.log.info(
                    "Downscaled %s from %dx%d to %dx%d to fit Stablecog's limits",
                    item.display,
                    info.width,
                    info.height,
                    fitted.width,
                    fitted.height,
                )
                self._uploads[result.key] = (data, fitted.content_type)
        except FileNotFoundError:
            self._fail_permanent(
                result,
                "file_not_found",
                f"{item.display}: no such file; check the path (the upstream task may have moved it)",
            )
            return False
        except IsADirectoryError:
            self._fail_permanent(
                result,
                "not_a_file",
                f"{item.display}: a directory, not an image file; list the files in it instead",
            )
            return False
        except images.ImageCheckError as exc:
            self._fail_permanent(result, exc.code, f"{item.display}: {exc}")
            return False
        except (OSError, ValueError) as exc:
            result.fail(
                FAILED,
                "unreadable_file",
                f"{item.display}: cannot be read ({type(exc).__name__}: {exc}); check its permissions and storage connection (an s3:// or gs:// path needs its Airflow provider installed)",
            )
            self.log.warning("Not sent: %s", result.message)
            return False
        return True

    def _fail_permanent(self, result: ItemRecord, code: str, message: str) -> None:
        result.fail(FAILED, code, message)
        self._permanent.add(result.key)
        self.log.warning("Not sent: %s", message)

    # -- running -----------------------------------------------------------------------------------

    def run(self, credits_start: int | None) -> BatchReport:
        """Upscale and download what :meth:`plan` found; return the report (ledger saved)."""
        plan = self._plan or self.plan()
        start = time.monotonic()
        self._balance = credits_start
        self._fatal: StablecogError | None = None
        self._max_in_flight = 0
        self._charged_now = 0
        self._double_now = 0
        self._lost_credits_now = 0  # credits of requests whose answer this try lost: maybe charged
        self._sent_any = False
        self._paid_sent = 0  # credits of paid requests dispatched this try (against spend_limit)
        self._fresh_read_done = False
        # requests at the server at once; workers write the ledger outside a slot, so durable
        # writes overlap with other requests instead of holding the server's capacity idle
        self._slots = _OrderedSlots(self.options.max_concurrency)
        self._tickets: dict[str, int] = {}
        self._halted = threading.Event()
        self._halt_reason: StablecogError | None = None
        self._sending = 0
        self._progress = _Progress(
            self.log,
            len(plan.to_upscale) + len(plan.to_download),
            self.options.progress_interval,
            self.kind.noun,
        )
        # free items first: they need no credit and never block on the floor
        pending = deque(sorted(plan.to_upscale, key=lambda k: k not in plan.free))
        upscales: dict[Future, str] = {}
        downloads: dict[Future, str] = {}
        up_pool = ThreadPoolExecutor(2 * self.options.max_concurrency, thread_name_prefix="stablecog-upscale")
        down_pool = ThreadPoolExecutor(
            self.options.download_concurrency, thread_name_prefix="stablecog-download"
        )
        try:
            for key in plan.to_download:
                downloads[down_pool.submit(self._download, key)] = key
            while pending or upscales or downloads:
                if self.stop_event.is_set():
                    self._abandon(pending, upscales, downloads)
                    break
                self._dispatch(pending, upscales, up_pool)
                if not upscales and not downloads:
                    if (
                        pending
                        and not self._over_budget(0, self._cost(pending[0]))
                        and self._refresh_balance(self._cost(pending[0]))
                    ):
                        continue
                    break  # nothing in flight and nothing may start: the rest is not started
                done, _ = wait([*upscales, *downloads], timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    if future in upscales:
                        self._on_upscaled(upscales.pop(future), future, downloads, down_pool, pending)
                    else:
                        self._on_downloaded(downloads.pop(future), future)
                self._progress.maybe_log(self._balance)
            self._mark_not_started(pending)
        except BaseException:  # e.g. AirflowTaskTimeout raised into this thread: no new request
            self._halted.set()
            self.client.cancel()
            raise
        finally:
            stopping = self.stop_event.is_set()
            up_pool.shutdown(wait=not stopping, cancel_futures=True)
            down_pool.shutdown(wait=not stopping, cancel_futures=True)
            self._finish_ledger()
        measured = None
        if self._sent_any and not stopping and self._fatal is None:
            try:
                measured = self.client.get_credits().total_remaining_credits
            except StablecogError as exc:
                self.log.info("Could not read the balance after the batch (%s)", exc.code)
        return BatchReport(
            results=self.results,
            credits_start=credits_start,
            credits_end=measured if measured is not None else self._balance,
            elapsed=time.monotonic() - start,
            fatal=self._fatal,
            stopped=stopping,
            max_in_flight=self._max_in_flight,
            counts=Counter(r.status for r in self.results.values()),
            charged_now=self._charged_now,
            charged_before=plan.charged_before,
            possibly_double_charged=self._double_now,
            in_flight_at_crash=len(plan.in_flight_at_crash),
            balance_measured_after=measured,
            permanent_failures=set(self._permanent),
            key_of=dict(self.key_of),
            max_credits=self.options.max_credits,
            budget_spent=self._budget_used(0),
            done_status=self.kind.done_status,
            adopted=self._adopted,
            adopted_credits_earlier=self._adopted_earlier,
        )

    def _finish_ledger(self) -> None:
        try:
            target = self.ledger.finish([r for r in self.results.values() if r.error])
        except OSError as exc:
            self.log.warning(
                "Could not write the ledger segment or manifest (%s: %s); every item record is already durable, "
                "the next try reads them",
                type(exc).__name__,
                exc,
            )
            return
        if target is not None:
            self.log.info("Manifest: %s", target)

    def _is_free(self, key: str) -> bool:
        return self._plan is not None and key in self._plan.free

    def _spend_limit_reached(self, cost: int = 1) -> bool:
        """One more paid request (of ``cost`` credits) would pass this try's ``spend_limit``."""
        limit = self.options.spend_limit
        return limit is not None and self._paid_sent + cost > limit

    def _may_start(self, key: str, paid_in_flight: int) -> bool:
        if self._fatal is not None or self.stop_event.is_set():
            return False
        if self._is_free(key):
            return True
        if self._spend_limit_reached(self._cost(key)):
            return False
        if self._over_budget(paid_in_flight, self._cost(key)):
            return False
        return (
            self._balance is None
            or self._balance - paid_in_flight - self._cost(key) >= self.options.credit_reserve
        )

    def _budget_used(self, paid_in_flight: int) -> int:
        """What this task may have spent: earlier tries, this try's charges and lost answers, in flight."""
        before = self._plan.budget_spent if self._plan is not None else 0
        return before + self._charged_now + self._lost_credits_now + paid_in_flight

    def _over_budget(self, paid_in_flight: int, cost: int = 1) -> bool:
        """One more paid request (of ``cost`` credits) could take this task past ``max_credits``."""
        limit = self.options.max_credits
        return limit is not None and self._budget_used(paid_in_flight) + cost > limit

    def _dispatch(self, pending: deque[str], upscales: dict[Future, str], pool: ThreadPoolExecutor) -> None:
        # one item queued per slot beyond the ones at the server, so each slot is refilled at once
        paid_in_flight = sum(self._cost(k) for k in upscales.values())
        while (
            pending
            and len(upscales) < 2 * self.options.max_concurrency
            and self._may_start(pending[0], paid_in_flight)
        ):
            key = pending.popleft()
            paid_in_flight += self._cost(key)
            self._paid_sent += self._cost(key)
            self._tickets[key] = self._slots.ticket()
            upscales[pool.submit(self._upscale, key)] = key
            self._sent_any = True

    def _refresh_balance(self, cost: int) -> bool:
        """The floor blocks the next item (``cost`` credits) with nothing in flight: read
        ``/v1/credits`` once; True if the fresh balance lets it start."""
        if (
            self._fresh_read_done
            or self._spend_limit_reached(cost)
            or self._fatal is not None
            or self.stop_event.is_set()
            or self._balance is None
        ):
            return False
        self._fresh_read_done = True
        try:
            fresh = self.client.get_credits().total_remaining_credits
        except StablecogError as exc:
            self.log.info("Could not re-read the balance (%s)", exc.code)
            return False
        if fresh > self._balance:
            self.log.info(
                "Balance re-read: %d credits (was %d by the last answer; refunds?)", fresh, self._balance
            )
            self._balance = fresh
            return fresh - cost >= self.options.credit_reserve
        self._balance = fresh
        return False

    def _upscale(self, key: str) -> JobAnswer:
        """Worker thread: upload if needed, record the intent, send (in dispatch order), record the answer."""
        ticket = self._tickets.pop(key)
        try:
            return self._upscale_item(key, ticket)
        finally:
            self._slots.forfeit(ticket)  # a no-op once the ticket was served

    def _upscale_item(self, key: str, ticket: int) -> JobAnswer:
        item, record = self.items[key], self.results[key]
        crashed = self._crash_pending.pop(key, None)
        if crashed and (found := self.kind.find_lost(self.client, item, record, self.log)) is not None:
            return self._adopt(key, found, crashed)
        value: str | None = None
        source = self.kind.upload_source(item)
        if source is not None:
            data, content_type = self._uploads.get(key, (None, None))
            name = os.path.basename(source.value.rstrip("/")) or "image"
            if data is not None:
                value = self.client.upload_image(data, filename=name, content_type=content_type)
            else:
                with _open_source(source).open("rb") as fh:
                    value = self.client.upload_image(fh, filename=name, content_type=content_type)
        # the intent is written inside the slot, just before the request: a pending record then
        # means "at the server, or about to be", never "waiting for a slot"
        with self._slot(ticket):
            with self._lock:
                if crashed:  # sent by a try that died: this resend may make it two charges
                    record.pending = [n for n in record.pending if n not in crashed]
                    if self.kind.charges_again(item):  # the server never charges an output ID twice
                        record.possibly_double_charged += len(crashed)
                        self._double_now += len(crashed)
            try:
                nonce = self.ledger.sent(record)
            except OSError as exc:  # write-ahead: what cannot be recorded is never sent
                raise StablecogFatalError(
                    f"{record.input}: could not record the request in the ledger before sending it "
                    f"({type(exc).__name__}: {exc}); nothing was sent or charged. Fix the destination "
                    "(free space, permissions, storage connection) and retry",
                    code="destination_error",
                ) from None
            try:
                answer = self.kind.send(self.client, item, value)
            except StablecogResponseLostError:
                raise  # stays pending until the coordinator decides (resend or give up)
            except BaseException:
                self.ledger.settle(record, nonce)  # a definite error: the server charged nothing
                self._save_note(record)
                raise
        self.ledger.settle(record, nonce)
        free = self._is_free(key) or (not self.kind.charges_again(item) and bool(crashed))
        cost = 0 if free else self.kind.cost(item)
        with self._lock:
            self._charged_now += cost
        self._record_answer(record, answer, cost)
        return answer

    def _adopt(self, key: str, found: JobAnswer, crashed: list[str]) -> JobAnswer:
        """A lost answer found again in the outputs listing: record it as answered, pay nothing again."""
        record, item = self.results[key], self.items[key]
        cost = self.kind.cost(item)
        with self._lock:
            record.pending = [n for n in record.pending if n not in crashed]
            record.adopted += 1
            self._adopted += 1
            if key in self._lost_now:  # lost by this try: charged after credits_start
                self._charged_now += cost
            else:  # sent by a try that died: charged before this one, never counted
                self._adopted_earlier += cost
        self.log.warning(
            "%s: its answer was lost, and its %d output(s) were found in the outputs listing; adopted "
            "without paying again",
            record.input,
            len(found.outputs),
        )
        self._record_answer(record, found, cost)
        return found

    def _record_answer(self, record: ItemRecord, answer: JobAnswer, cost: int) -> None:
        """Worker: the answer's outputs into the record, made durable before anything depends on it."""
        output_id, url = answer.outputs[0]
        url = url if isinstance(url, str) and url else None
        with self._lock:
            record.answered(
                output_id,
                url,
                charged=cost > 0,
                cost=cost,
                outputs=list(answer.outputs) if answer.multi else None,
            )
            if url is None or (answer.multi and not all(u for _, u in answer.outputs)):
                record.fail(
                    FAILED,
                    "invalid_output_url",
                    f"{record.input}: the server answered output {output_id} without a usable image URL; check the output in Stablecog",
                )
            elif self.destination is None:
                record.status = self.kind.done_status
        try:
            self.ledger.save(record)  # durable before anything depends on the answer
        except OSError as exc:  # no state store took it either: finish() writes it again
            self.log.warning(
                "Could not record the answer for %s at the destination (%s: %s); it is kept for the "
                "end of the try",
                record.input,
                type(exc).__name__,
                exc,
            )

    @contextlib.contextmanager
    def _slot(self, ticket: int) -> Iterator[None]:
        """A place among the ``max_concurrency`` requests at the server (nothing sent after a stop)."""
        self._slots.acquire(ticket)
        try:
            if self.stop_event.is_set() or self._fatal is not None or self._halted.is_set():
                raise StablecogCancelledError(
                    "not sent: the batch was stopped before this request", code="cancelled"
                )
            with self._lock:
                self._sending += 1
                self._max_in_flight = max(self._max_in_flight, self._sending)
            try:
                yield
            except StablecogFatalError as exc:
                self._halt_reason = exc
                self._halted.set()  # before the slot is released: no queued request may follow it
                raise
            finally:
                with self._lock:
                    self._sending -= 1
        finally:
            self._slots.release()

    def _on_upscaled(
        self,
        key: str,
        future: Future,
        downloads: dict[Future, str],
        pool: ThreadPoolExecutor | None,
        pending: deque[str] | None,
    ) -> None:
        """Coordinator: account for an answer, then queue its download (``pool``: None after a stop)."""
        record = self.results[key]
        try:
            answer: JobAnswer = future.result()
        except StablecogResponseLostError as exc:
            self._on_lost(record, exc, pending)
            return
        except StablecogError as exc:
            self._on_error(record, exc)
            return
        except Exception as exc:  # a bug must not lose the batch: record it against the item
            self.log.exception("Unexpected error while upscaling %s", record.input)
            record.fail(FAILED, "internal_error", f"{record.input}: unexpected {type(exc).__name__}: {exc}")
            self._progress.tick(ok=False)
            return
        if answer.remaining_credits is not None and not self._is_free(key):
            # answers arrive out of charge order: the known balance may only go down
            self._balance = (
                answer.remaining_credits
                if self._balance is None
                else min(self._balance, answer.remaining_credits)
            )
        if record.status == FAILED:  # the answer had no usable URL
            self.log.warning("%s", record.message)
            self._progress.tick(ok=False)
        elif self.destination is None:
            self._progress.tick(ok=True)
        elif pool is not None:
            downloads[pool.submit(self._download, key)] = key

    def _on_lost(
        self, record: ItemRecord, exc: StablecogResponseLostError, pending: deque[str] | None
    ) -> None:
        """A sent request without an answer: maybe charged. Resend (reported) or give up on it."""
        key = record.key
        self._lost[key] += 1
        if not self._is_free(key):
            with self._lock:
                self._lost_credits_now += self._cost(key)
        cancelled = isinstance(exc, StablecogCancelledError) or self.stop_event.is_set()
        if cancelled or pending is None:
            record.fail(
                NOT_STARTED,
                exc.code,
                f"{record.input}: in flight when the task was stopped; it may have been charged (the next try resends it and reports it)",
            )
            self._save_note(record)
            return
        if self.options.resend_possibly_charged and self._lost[key] <= MAX_LOST_ANSWERS:
            with self._lock:
                self._crash_pending[key] = list(record.pending)
                self._lost_now.add(key)
            self.log.warning("%s — resending it (reported as possibly double-charged)", exc.message)
            pending.appendleft(key)
            return
        why = (
            "resend_possibly_charged=False"
            if not self.options.resend_possibly_charged
            else f"lost {self._lost[key]} times"
        )
        record.fail(
            FAILED,
            exc.code,
            f"{exc.message} — not resent ({why}); it may have been charged: look for it in Stablecog before retrying",
        )
        self._save_note(record)
        self.log.warning("%s", record.message)
        self._progress.tick(ok=False)

    def _on_error(self, record: ItemRecord, exc: StablecogError) -> None:
        if isinstance(exc, StablecogFatalError):
            if self._fatal is None:
                self._fatal = exc
                self.log.error("Stopping the batch: %s", exc)
            if exc.code == "insufficient_credits":
                self._balance = 0 if self._balance is None else min(self._balance, 0)
            record.fail(NOT_STARTED, exc.code, f"{record.input}: not upscaled: {exc.message}")
        elif (
            isinstance(exc, StablecogCancelledError)
            and (reason := self._fatal or self._halt_reason) is not None
        ):
            record.fail(
                NOT_STARTED,
                reason.code,
                f"{record.input}: not started: the batch stopped on {reason.code}; fix that and clear the task to resume",
            )
        elif isinstance(exc, StablecogCancelledError):
            record.fail(NOT_STARTED, exc.code, f"{record.input}: {exc.message}")
        else:
            gave_up = (
                " — still failing after the client's retries; retrying the task tries it again"
                if isinstance(exc, StablecogRetryableError)
                else ""
            )
            record.fail(FAILED, exc.code, exc.message + gave_up)
            if isinstance(exc, StablecogInputError):
                self._permanent.add(record.key)
            self.log.warning("Failed: %s", exc.message)
        self._save_note(record)
        self._progress.tick(ok=record.status != FAILED)

    def _save_note(self, record: ItemRecord) -> None:
        """Record an outcome that costs nothing (a failure, a stop): best effort, never fatal."""
        try:
            self.ledger.save(record)
        except OSError as exc:  # what was paid is durable already; only this note is lost
            self.log.debug("Could not record %s for %s (%s)", record.error, record.input, exc)

    def _download(self, key: str) -> tuple[str, int, int]:
        """Worker: stream each result under a safe name, verify it, rename it into place, record it."""
        record = self.results[key]
        assert self.destination is not None and record.url
        multi = bool(record.output_ids)
        first: tuple[str, int, int] | None = None
        for index, url in enumerate(record.result_urls()):
            target = self.destination / image_name(key, index if multi else None)
            with AtomicWrite(target) as writer:
                self.client.download(url, writer.open)
                with writer.temp.open("rb") as fh:
                    width, height = images.image_size(fh)
            path = _shown_path(target)
            first = first or (path, width, height)
            if multi:
                with self._lock:
                    record.downloaded_output(index, path)
        assert first is not None
        with self._lock:
            record.downloaded(*first, status=self.kind.done_status)
        # the image itself is the durable proof (written whole or not at all): its record goes into
        # the try's segment, and a try that dies first leaves the next one "paid, image present"
        self.ledger.keep(record)
        return first

    def _on_downloaded(self, key: str, future: Future) -> None:
        record = self.results[key]
        try:
            future.result()
        except (StablecogError, images.ImageCheckError) as exc:
            self._download_failed(
                record, getattr(exc, "code", "download_failed"), f"the download failed: {exc}"
            )
            return
        except OSError as exc:
            self._download_failed(
                record,
                "destination_error",
                f"writing to the destination failed ({type(exc).__name__}: {exc}); fix the destination",
            )
            return
        except (
            Exception
        ) as exc:  # a bug or a hostile answer must not lose the batch: record it against the item
            self.log.exception("Unexpected error while downloading %s", record.input)
            self._download_failed(
                record, "internal_error", f"the download failed unexpectedly ({type(exc).__name__})"
            )
            return
        self._progress.tick(ok=True)

    def _download_failed(self, record: ItemRecord, code: str, what: str) -> None:
        record.fail(
            FAILED,
            code,
            f"{record.input}: {self.kind.done_status} (output {record.output_id}) but {what}; a retry downloads it again without paying",
        )
        self._save_note(record)
        self.log.warning("%s", record.message)
        self._progress.tick(ok=False)

    def _mark_not_started(self, pending: deque[str]) -> None:
        if not pending:
            return
        if self._fatal is not None:
            code, why = self._fatal.code, f"the batch stopped on {self._fatal.code}"
        elif self.stop_event.is_set():
            code, why = "cancelled", "the task was stopped"
        elif self._over_budget(0, self._cost(pending[0])):
            used = self._budget_used(0)
            for key in pending:
                record = self.results[key]
                record.fail(
                    NOT_STARTED,
                    "max_credits",
                    f"{record.input}: not started: this task's budget max_credits={self.options.max_credits} "
                    f"is spent ({used} credits across its tries, counting requests that may have been "
                    "charged); raise max_credits and clear the task to finish it (nothing done is paid again)",
                )
            return
        elif self._spend_limit_reached(self._cost(pending[0])):
            code = "credit_reserve"
            why = (
                f"this chunk's share of the fan-out's credits ({self.options.spend_limit} this try) is spent; "
                "more could take the account below the reserve while other chunks spend too"
            )
        elif (self._balance or 0) < 1:
            code, why = "insufficient_credits", f"the balance is {self._balance} credits"
        else:
            code = "credit_reserve"
            why = f"it would take the balance ({self._balance}) below credit_reserve={self.options.credit_reserve}"
        for key in pending:
            record = self.results[key]
            record.fail(
                NOT_STARTED,
                code,
                f"{record.input}: not started: {why}; add credits and clear the task to resume",
            )

    def _abandon(
        self, pending: deque[str], upscales: dict[Future, str], downloads: dict[Future, str]
    ) -> None:
        """On stop: no new request; give in-flight work a short grace, then leave it."""
        self.client.cancel()
        done, _ = wait([*upscales, *downloads], timeout=STOP_GRACE_SECONDS)
        for future in done:
            if future in upscales:
                key = upscales.pop(future)
                self._on_upscaled(key, future, {}, None, None)
                record = self.results[key]
                if record.paid and record.status == NOT_STARTED:
                    record.fail(
                        NOT_STARTED,
                        "cancelled",
                        f"{record.input}: {self.kind.done_status} (output {record.output_id}) but the task was stopped before the download; a retry or a new run with the same destination downloads it without paying",
                    )
            else:
                self._on_downloaded(downloads.pop(future), future)
        for key in [*upscales.values(), *downloads.values()]:
            record = self.results[key]
            if record.status != self.kind.done_status:
                record.fail(
                    NOT_STARTED,
                    "cancelled",
                    f"{record.input}: in flight when the task was stopped (it may have been charged; the ledger recorded it, a retry resumes from there)",
                )
        self._mark_not_started(pending)
        pending.clear()


class _OrderedSlots:
    """A semaphore that grants its places in ticket order (so items go out in input order).

    ``ticket()`` is taken when an item is dispatched; the worker ``acquire(ticket)``-s a place just
    before its request and ``release()``-s it when the answer is in. A worker that ends without
    sending ``forfeit``-s its ticket so the ones after it are not held up.
    """

    def __init__(self, places: int) -> None:
        self._free = places
        self._next_ticket = 0
        self._serving = 0
        self._done: set[int] = set()
        self._cond = threading.Condition()

    def ticket(self) -> int:
        with self._cond:
            self._next_ticket += 1
            return self._next_ticket - 1

    def acquire(self, ticket: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._free > 0 and self._serving == ticket)
            self._free -= 1
            self._advance(ticket)

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    def forfeit(self, ticket: int) -> None:
        with self._cond:
            if ticket >= self._serving:
                self._advance(ticket)

    def _advance(self, ticket: int) -> None:
        self._done.add(ticket)
        while self._serving in self._done:
            self._done.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()


class _Progress:
    """done / total, failures, images per second and ETA, logged every ``interval`` seconds."""

    def __init__(self, log: logging.Logger, total: int, interval: float, unit: str = "images") -> None:
        self.log, self.total, self.interval, self.unit = log, total, interval, unit
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()

    def tick(self, *, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1

    def maybe_log(self, balance: int | None) -> None:
        now = time.monotonic()
        if self.interval <= 0 or now - self.last < self.interval or not self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.log.info(
            "Progress: %d/%d done, %d failed, %.2f %s/s, ETA %s%s",
            self.done,
            self.total,
            self.failed,
            rate,
            self.unit,
            "?" if eta == float("inf") else f"{eta:.0f} s",
            "" if balance is None else f", credits left ≤ {balance}",
        )


def _open_source(item: InputItem) -> ObjectStoragePath:
    from airflow.sdk import ObjectStoragePath

    value = item.value
    return ObjectStoragePath(value if "://" in value else "file://" + value)


def _shown_path(target: ObjectStoragePath) -> str:
    """How an image's place is shown in records: a local path, or the object's URL."""
    return target.path if is_local(target) else str(target)


__all__ = ["BatchOptions", "BatchPlan", "BatchReport", "ItemRecord", "ItemResult", "UpscaleBatch"]
