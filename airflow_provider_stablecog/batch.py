"""The upscale engine behind :class:`~airflow_provider_stablecog.operators.upscale.UpscaleOperator`.

One coordinating thread (the caller's) owns every piece of mutable state: the queue, the credit
ledger, the results and the checkpoint. Worker threads only do I/O: a fixed pool of
``max_concurrency`` threads uploads and upscales, a small pool downloads results. The coordinator
starts an upscale only while

* fewer than ``max_concurrency`` are in flight,
* the last known balance minus the upscales in flight stays at or above ``credit_reserve`` + 1,
* no fatal error (``insufficient_credits``, 401, 403) has been seen and no stop was requested.

Every answered upscale is checkpointed before its download starts, so a retried task downloads it
again for free instead of paying for it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_stablecog.exceptions import (
    CancelledError,
    StablecogError,
    StablecogFatalError,
    StablecogRetryableError,
)
from airflow_provider_stablecog.utils import images
from airflow_provider_stablecog.utils.storage import AtomicWrite, output_file_name

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_stablecog.client import StablecogClient
    from airflow_provider_stablecog.models import UpscaleResult
    from airflow_provider_stablecog.utils.checkpoint import Checkpoint
    from airflow_provider_stablecog.utils.inputs import InputItem, InputPlan

UPSCALED, SKIPPED, FAILED, NOT_STARTED = "upscaled", "skipped", "failed", "not_started"
STOP_GRACE_SECONDS = 5.0
# Pages of already-upscaled outputs read to know which output-ID inputs are free (300 per page).
MAX_UPSCALED_PAGES = 20


@dataclass
class ItemResult:
    """What happened to one unique input."""

    key: str
    input: str
    status: str = NOT_STARTED
    output_id: str | None = None
    url: str | None = None
    path: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    message: str | None = None
    credits_charged: int = 0
    finished_at: str | None = None

    def fail(self, status: str, code: str, message: str) -> None:
        self.status, self.error, self.message = status, code, message
        self.finished_at = _now()

    def manifest_record(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "key": self.key,
            "status": self.status,
            "output_id": self.output_id,
            "url": self.url,
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "error": self.error,
            "message": self.message,
            "credits_charged": self.credits_charged,
            "finished_at": self.finished_at,
        }

    def checkpoint_record(self) -> dict[str, Any]:
        return {"output_id": self.output_id, "url": self.url, "path": self.path, "width": self.width, "height": self.height}


@dataclass
class BatchOptions:
    model_id: str | None = None
    max_concurrency: int = 1
    credit_reserve: int = 0
    downscale_oversized: bool = False
    progress_interval: float = 10.0
    download_concurrency: int = 4


@dataclass
class BatchReport:
    results: dict[str, ItemResult]
    credits_start: int | None
    credits_end: int | None
    elapsed: float
    fatal: StablecogError | None = None
    stopped: bool = False
    max_in_flight: int = 0
    counts: Counter = field(default_factory=Counter)

    @property
    def upscaled_now(self) -> int:
        return self.counts.get(UPSCALED, 0)

    def failures(self) -> list[ItemResult]:
        return [r for r in self.results.values() if r.status == FAILED]


class UpscaleBatch:
    """Run one batch. ``previous`` holds records of items done in earlier tries or runs."""

    def __init__(
        self,
        client: StablecogClient,
        plan: InputPlan,
        options: BatchOptions,
        *,
        destination: ObjectStoragePath | None = None,
        checkpoint: Checkpoint | None = None,
        previous: dict[str, dict[str, Any]] | None = None,
        log: logging.Logger | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.plan = plan
        self.options = options
        self.destination = destination
        self.checkpoint = checkpoint
        self.previous = previous or {}
        self.log = log or logging.getLogger(__name__)
        self.stop_event = stop_event or threading.Event()
        self.results = {key: ItemResult(key=key, input=item.display) for key, item in plan.unique.items()}
        self._uploads: dict[str, tuple[bytes | None, str]] = {}
        self.free_keys: set[str] = set()

    # -- planning --------------------------------------------------------------------------------

    def classify(self) -> tuple[list[str], list[str]]:
        """Split unique keys into (to upscale, to download only); mark skipped and pre-flight failures."""
        to_upscale: list[str] = []
        to_download: list[str] = []
        for key, item in self.plan.unique.items():
            result = self.results[key]
            done = self.previous.get(key)
            if done and done.get("url"):
                self._apply_previous(result, done)
                if self.destination is not None and not self._file_present(result):
                    to_download.append(key)
                else:
                    result.status = SKIPPED
                continue
            if item.needs_upload and not self._preflight_local(item, result):
                continue
            to_upscale.append(key)
        self.free_keys = self._already_upscaled([k for k in to_upscale if self.plan.unique[k].kind == "output_id"])
        return to_upscale, to_download

    def _already_upscaled(self, output_keys: list[str]) -> set[str]:
        """Output IDs among the inputs that are already upscaled: Stablecog answers those for free."""
        if not output_keys:
            return set()
        wanted, found = set(output_keys), set()
        try:
            for output in self.client.iter_generation_outputs(per_page=300, upscaled="only", limit=300 * MAX_UPSCALED_PAGES):
                if output.id.lower() in wanted:
                    found.add(output.id.lower())
        except StablecogError as exc:
            self.log.info("Could not list upscaled outputs (%s); output IDs are counted as 1 credit each", exc.code)
        return found

    def _apply_previous(self, result: ItemResult, done: dict[str, Any]) -> None:
        for name in ("output_id", "url", "path", "width", "height"):
            setattr(result, name, done.get(name))

    def _file_present(self, result: ItemResult) -> bool:
        if not result.path or self.destination is None:
            return False
        return (self.destination / os.path.basename(result.path)).exists()

    def _preflight_local(self, item: InputItem, result: ItemResult) -> bool:
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
                self._uploads[item.key] = (None, info.content_type)
            except images.ImageCheckError:
                if not self.options.downscale_oversized:
                    raise
                with path.open("rb") as fh:
                    data, fitted = images.fit_within_limits(fh)
                self.log.info("Downscaled %s from %dx%d to %dx%d to fit Stablecog's limits", item.display, info.width, info.height, fitted.width, fitted.height)
                self._uploads[item.key] = (data, fitted.content_type)
        except FileNotFoundError:
            result.fail(FAILED, "file_not_found", f"{item.display}: no such file; check the path (the upstream task may have moved it)")
            return False
        except IsADirectoryError:
            result.fail(FAILED, "not_a_file", f"{item.display}: a directory, not an image file; list the files in it instead")
            return False
        except images.ImageCheckError as exc:
            result.fail(FAILED, exc.code, f"{item.display}: {exc}")
            return False
        except (OSError, ValueError) as exc:
            result.fail(FAILED, "unreadable_file", f"{item.display}: cannot be read ({type(exc).__name__}: {exc}); check its permissions and storage connection (an s3:// or gs:// path needs its Airflow provider installed)")
            return False
        return True

    # -- running -----------------------------------------------------------------------------------

    def run(self, to_upscale: list[str], to_download: list[str], credits_start: int | None) -> BatchReport:
        start = time.monotonic()
        self._balance = credits_start
        self._fatal: StablecogError | None = None
        self._max_in_flight = 0
        self._progress = _Progress(self.log, len(to_upscale) + len(to_download), self.options.progress_interval)
        pending = deque(to_upscale)
        upscales: dict[Future, str] = {}
        downloads: dict[Future, str] = {}
        up_pool = ThreadPoolExecutor(self.options.max_concurrency, thread_name_prefix="stablecog-upscale")
        down_pool = ThreadPoolExecutor(self.options.download_concurrency, thread_name_prefix="stablecog-download")
        try:
            for key in to_download:
                downloads[down_pool.submit(self._download, key)] = key
            while pending or upscales or downloads:
                if self.stop_event.is_set():
                    self._abandon(pending, upscales, downloads)
                    break
                self._dispatch(pending, upscales, up_pool)
                if not upscales and not downloads:
                    break  # nothing in flight and nothing may start: the rest is not started
                done, _ = wait([*upscales, *downloads], timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    if future in upscales:
                        self._on_upscaled(upscales.pop(future), future, downloads, down_pool)
                    else:
                        self._on_downloaded(downloads.pop(future), future)
                self._progress.maybe_log(self._balance)
                if self.checkpoint is not None:
                    self.checkpoint.maybe_flush()
            self._mark_not_started(pending)
        finally:
            up_pool.shutdown(wait=not self.stop_event.is_set(), cancel_futures=True)
            down_pool.shutdown(wait=not self.stop_event.is_set(), cancel_futures=True)
            if self.checkpoint is not None:
                self.checkpoint.flush()
        counts = Counter(r.status for r in self.results.values())
        return BatchReport(
            results=self.results,
            credits_start=credits_start,
            credits_end=self._balance,
            elapsed=time.monotonic() - start,
            fatal=self._fatal,
            stopped=self.stop_event.is_set(),
            max_in_flight=self._max_in_flight,
            counts=counts,
        )

    def _may_start(self, in_flight: int) -> bool:
        if self._fatal is not None or self.stop_event.is_set():
            return False
        if self._balance is None:
            return True
        return self._balance - in_flight - 1 >= self.options.credit_reserve

    def _dispatch(self, pending: deque[str], upscales: dict[Future, str], pool: ThreadPoolExecutor) -> None:
        while pending and len(upscales) < self.options.max_concurrency and self._may_start(len(upscales)):
            key = pending.popleft()
            upscales[pool.submit(self._upscale, key)] = key
        self._max_in_flight = max(self._max_in_flight, len(upscales))

    def _upscale(self, key: str) -> UpscaleResult:
        item = self.plan.unique[key]
        value = item.value
        if item.needs_upload:
            data, content_type = self._uploads.get(key, (None, None))
            name = os.path.basename(item.value.rstrip("/")) or "image"
            if data is not None:
                value = self.client.upload_image(data, filename=name, content_type=content_type)
            else:
                with _open_source(item).open("rb") as fh:
                    value = self.client.upload_image(fh, filename=name, content_type=content_type)
        return self.client.upscale(value, model_id=self.options.model_id)

    def _on_upscaled(
        self, key: str, future: Future, downloads: dict[Future, str], pool: ThreadPoolExecutor | None
    ) -> None:
        """Record an upscale's answer (checkpoint first), then queue its download (``pool``: None after a stop)."""
        result = self.results[key]
        try:
            answer: UpscaleResult = future.result()
        except StablecogError as exc:
            self._on_error(result, exc)
            return
        except Exception as exc:  # a bug must not lose the batch: record it against the item
            self.log.exception("Unexpected error while upscaling %s", result.input)
            result.fail(FAILED, "internal_error", f"{result.input}: unexpected {type(exc).__name__}: {exc}")
            return
        if answer.remaining_credits is not None:
            self._balance = answer.remaining_credits
        output = answer.output
        result.credits_charged = 0 if key in self.free_keys else 1
        if not isinstance(output.image_url, str) or not output.image_url:  # untrusted: no usable result URL
            result.output_id = output.id
            result.fail(FAILED, "invalid_output_url", f"{result.input}: the server answered output {output.id} without a usable image URL; check the output in Stablecog")
            self.log.warning("%s", result.message)
            self._progress.tick(ok=False)
            return
        result.output_id, result.url = output.id, output.image_url
        result.finished_at = _now()
        if self.checkpoint is not None:
            self.checkpoint.mark(key, result.checkpoint_record())
        if self.destination is None:
            result.status = UPSCALED
            self._progress.tick(ok=True)
        elif pool is not None:
            downloads[pool.submit(self._download, key)] = key

    def _on_error(self, result: ItemResult, exc: StablecogError) -> None:
        if isinstance(exc, StablecogFatalError):
            if self._fatal is None:
                self._fatal = exc
                self.log.error("Stopping the batch: %s", exc)
            result.fail(NOT_STARTED, exc.code, f"{result.input}: not upscaled: {exc.message}")
        elif isinstance(exc, CancelledError):
            result.fail(NOT_STARTED, exc.code, f"{result.input}: {exc.message}")
        else:
            gave_up = " — still failing after the client's retries; retrying the task tries it again" if isinstance(exc, StablecogRetryableError) else ""
            result.fail(FAILED, exc.code, exc.message + gave_up)
            self.log.warning("Failed: %s", exc.message)
        self._progress.tick(ok=result.status != FAILED)

    def _download(self, key: str) -> tuple[str, int, int]:
        """Stream the result to the destination under a safe name, verify it, rename it into place."""
        result = self.results[key]
        assert self.destination is not None and result.url
        target = self.destination / output_file_name(key)
        with AtomicWrite(target) as writer:
            self.client.download(result.url, writer.open)
            with writer.temp.open("rb") as fh:
                width, height = images.image_size(fh)
        return (target.path if target.protocol in ("file", "local") else str(target)), width, height

    def _on_downloaded(self, key: str, future: Future) -> None:
        result = self.results[key]
        try:
            path, width, height = future.result()
        except (StablecogError, images.ImageCheckError) as exc:
            self._download_failed(result, getattr(exc, "code", "download_failed"), f"the download failed: {exc}")
            return
        except OSError as exc:
            self._download_failed(result, "destination_error", f"writing to the destination failed ({type(exc).__name__}: {exc}); fix the destination")
            return
        except Exception as exc:  # a bug or a hostile answer must not lose the batch: record it against the item
            self.log.exception("Unexpected error while downloading %s", result.input)
            self._download_failed(result, "internal_error", f"the download failed unexpectedly ({type(exc).__name__})")
            return
        result.path, result.width, result.height = path, width, height
        result.status = UPSCALED
        result.finished_at = _now()
        if self.checkpoint is not None:
            self.checkpoint.mark(key, result.checkpoint_record())
        self._progress.tick(ok=True)

    def _download_failed(self, result: ItemResult, code: str, what: str) -> None:
        result.fail(FAILED, code, f"{result.input}: upscaled (output {result.output_id}) but {what}; a retry downloads it again without paying")
        self.log.warning("%s", result.message)
        self._progress.tick(ok=False)

    def _mark_not_started(self, pending: deque[str]) -> None:
        if not pending:
            return
        if self._fatal is not None:
            code, why = self._fatal.code, f"the batch stopped on {self._fatal.code}"
        elif self.stop_event.is_set():
            code, why = "cancelled", "the task was stopped"
        elif (self._balance or 0) < 1:
            code, why = "insufficient_credits", f"the balance is {self._balance} credits"
        else:
            code = "credit_reserve"
            why = f"it would take the balance ({self._balance}) below credit_reserve={self.options.credit_reserve}"
        for key in pending:
            result = self.results[key]
            result.fail(NOT_STARTED, code, f"{result.input}: not started: {why}; add credits and clear the task to resume")

    def _abandon(self, pending: deque[str], upscales: dict[Future, str], downloads: dict[Future, str]) -> None:
        """On stop: no new request; give in-flight work a short grace, then leave it."""
        self.client.cancel()
        done, _ = wait([*upscales, *downloads], timeout=STOP_GRACE_SECONDS)
        for future in done:
            if future in upscales:
                key = upscales.pop(future)
                self._on_upscaled(key, future, {}, None)
                result = self.results[key]
                if result.status == NOT_STARTED and result.url and result.error is None:
                    result.fail(NOT_STARTED, "cancelled", f"{result.input}: upscaled (output {result.output_id}) but the task was stopped before the download; a retry or a new run with the same destination downloads it without paying")
            else:
                self._on_downloaded(downloads.pop(future), future)
        for key in [*upscales.values(), *downloads.values()]:
            result = self.results[key]
            if result.status != UPSCALED:
                result.fail(NOT_STARTED, "cancelled", f"{result.input}: in flight when the task was stopped (it may have been charged; a retry reuses the result if it was recorded)")
        self._mark_not_started(pending)
        pending.clear()


class _Progress:
    """done / total, failures, images per second and ETA, logged every ``interval`` seconds."""

    def __init__(self, log: logging.Logger, total: int, interval: float) -> None:
        self.log, self.total, self.interval = log, total, interval
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
            "Progress: %d/%d done, %d failed, %.2f images/s, ETA %s, credits left %s",
            self.done, self.total, self.failed, rate, "?" if eta == float("inf") else f"{eta:.0f} s", balance,
        )


def _open_source(item: InputItem) -> ObjectStoragePath:
    from airflow.sdk import ObjectStoragePath

    value = item.value
    return ObjectStoragePath(value if "://" in value else "file://" + value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["BatchOptions", "BatchReport", "ItemResult", "UpscaleBatch"]
