"""StablecogCreditsTrigger: poll ``GET /v1/credits`` in the triggerer until a balance is reached.

Events (one per run, then the trigger returns):

* ``{"status": "success", "remaining_credits": N, "required": R}`` once N >= R;
* ``{"status": "timeout", "message": ..., "remaining_credits": last seen or None, "required": R}``
  when ``end_time`` (an absolute epoch time, so a triggerer restart does not restart the timeout)
  has passed;
* ``{"status": "error", "message": ..., "fatal": bool}``: a rejected key or unusable connection
  (``fatal``: retrying cannot help), an unknown API answer, or an unexpected exception.

Each check is :meth:`StablecogHook.aget_credits`: the same client, the same error classes and the
same classification (:func:`~airflow_provider_stablecog.hooks.stablecog.classify_credits_error`) as
the sensor's poke, run in a worker thread so the triggerer's event loop is never blocked. So a
poking and a deferred sensor end the same way on the same answer: transient errors (429, 5xx,
connection errors, a 200 that is not JSON) are logged and polled again, a 429's Retry-After is
honoured; a rejected key is a fatal error; any other answer is an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

CLASS_PATH = "airflow_provider_stablecog.triggers.credits.StablecogCreditsTrigger"
# seconds a check may run past end_time before the trigger gives up on it and times out
DEADLINE_GRACE = 5.0


def _epoch(end_time: float | int | str | datetime) -> float:
    """An absolute end time (epoch seconds, ISO 8601 string, or aware datetime) → epoch seconds."""
    if isinstance(end_time, bool):
        raise TypeError("end_time must be an epoch time, an ISO 8601 string or a datetime, not a bool")
    if isinstance(end_time, (int, float)):
        return float(end_time)
    if isinstance(end_time, str):
        end_time = datetime.fromisoformat(end_time)
    if isinstance(end_time, datetime):
        if end_time.tzinfo is None:
            raise ValueError(
                f"end_time {end_time.isoformat()!r} has no time zone; pass an aware time or epoch seconds"
            )
        return end_time.timestamp()
    raise TypeError(f"end_time must be an epoch time, an ISO 8601 string or a datetime, got {end_time!r}")


class StablecogCreditsTrigger(BaseTrigger):
    """Fire once the account behind ``conn_id`` has at least ``required`` credits.

    :param conn_id: the Stablecog connection.
    :param required: credits needed (int >= 0), reserve included.
    :param poke_interval: seconds between two checks.
    :param end_time: absolute deadline: epoch seconds (as serialized), an ISO 8601 string or an
        aware datetime.
    """

    def __init__(
        self,
        conn_id: str,
        required: int,
        poke_interval: float,
        end_time: float | str | datetime,
    ) -> None:
        super().__init__()
        if not isinstance(required, int) or isinstance(required, bool) or required < 0:
            raise ValueError(f"required must be an int >= 0, got {required!r}")
        number = isinstance(poke_interval, (int, float)) and not isinstance(poke_interval, bool)
        if not number or poke_interval <= 0:
            raise ValueError(f"poke_interval must be a number of seconds > 0, got {poke_interval!r}")
        self.conn_id = conn_id
        self.required = required
        self.poke_interval = float(poke_interval)
        self.end_time = _epoch(end_time)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASS_PATH,
            {
                "conn_id": self.conn_id,
                "required": self.required,
                "poke_interval": self.poke_interval,
                "end_time": self.end_time,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll every ``poke_interval`` seconds; yield one event, then return."""
        try:
            event = await self._wait()
        except Exception as exc:  # anything unexpected ends the wait with a clear error
            self.log.exception("StablecogCreditsTrigger failed")
            message = f"credits trigger failed: {type(exc).__name__}: {exc}"
            event = {"status": "error", "fatal": False, "message": message}
        yield TriggerEvent(event)
        return

    async def _wait(self) -> dict[str, Any]:
        from airflow_provider_stablecog.hooks.stablecog import StablecogHook

        # one check is one request: the trigger polls again anyway (as the sensor's poke does)
        hook = StablecogHook(stablecog_conn_id=self.conn_id, max_retries=0, rate_limit_budget=0)
        try:
            return await self._poll(hook)
        finally:
            client = hook.__dict__.get("client")
            if client is not None:
                client.close()

    async def _poll(self, hook: Any) -> dict[str, Any]:
        from airflow_provider_stablecog.hooks.stablecog import classify_credits_error

        remaining: int | None = None
        while True:
            delay = self.poke_interval
            try:
                # a hanging server must not hold the trigger past its deadline (the worker thread
                # ends by itself at the connection's read timeout)
                bound = max(self.end_time - time.time(), 0.0) + DEADLINE_GRACE
                remaining = (await asyncio.wait_for(hook.aget_credits(), bound)).total_remaining_credits
            except TimeoutError:
                self.log.warning("No answer from the Stablecog credits route before the deadline")
            except Exception as exc:
                kind = classify_credits_error(exc)
                if kind != "transient":
                    return self._error(exc, fatal=kind == "fatal")
                retry_after = getattr(exc, "retry_after", None)
                if retry_after:
                    delay = max(delay, retry_after)  # never poll again before Retry-After
                self.log.warning(
                    "Could not read the Stablecog credits (next check in %.1f s): %s", delay, exc
                )
            else:
                if remaining >= self.required:
                    return {"status": "success", "remaining_credits": remaining, "required": self.required}
                self.log.info("Stablecog credits: %d remaining, %d needed; waiting", remaining, self.required)
            left = self.end_time - time.time()
            if left <= 0:
                return {
                    "status": "timeout",
                    "remaining_credits": remaining,
                    "required": self.required,
                    "message": (
                        f"Timed out waiting for {self.required} Stablecog credits on connection "
                        f"{self.conn_id!r} (last seen: {remaining if remaining is not None else 'unknown'})"
                    ),
                }
            await asyncio.sleep(min(delay, left))

    def _error(self, exc: Exception, *, fatal: bool) -> dict[str, Any]:
        from airflow_provider_stablecog.exceptions import StablecogError

        what = "fix the connection, then clear the task" if fatal else "check the Stablecog service"
        text = str(exc)
        if not isinstance(exc, StablecogError):
            text = f"{type(exc).__name__}: {exc}"
            self.log.error("Unexpected error reading the Stablecog credits: %s", text)
        return {
            "status": "error",
            "fatal": fatal,
            "code": getattr(exc, "code", None),
            "message": f"Could not read the credits of connection {self.conn_id!r}: {text}. {what}.",
        }
