"""The credit reserve of a fan-out: mapped chunks on several workers spend from one account.

One :class:`~airflow_provider_stablecog.operators.upscale.UpscaleOperator` keeps the account's
balance at or above ``credit_reserve`` by itself: it starts a paid upscale only while
``known balance − its paid requests in flight − 1 ≥ credit_reserve``. Chunks of one list that run
at the same time (on one worker or several) each see the balance, but not the others' requests in
flight nor what the others charged since their last answer, so that floor alone can be crossed by
up to the requests the *other* chunks have in flight.

A fan-out therefore sizes the whole list once, before it fans out
(:class:`~airflow_provider_stablecog.sensors.credits.StablecogCreditsSensor` with ``inputs`` = the
whole list pushes this as its ``credit_plan`` XCom), and gives every chunk a share of it:

* ``B0`` — the balance the sensor read (``remaining``), ``N`` — credits the whole list needs
  (``needed``: one per unique item not already paid at the destination), ``r`` — the ``reserve``;
* the headroom ``H = B0 − r − N`` (≥ 0 when the sensor waited for enough credits);
* a chunk whose own plan needs ``m`` credits may send at most
  ``L = min(m, N) − k − d + share`` paid requests in a try, where ``k`` = its items in flight when
  an earlier try died (they may have been charged), ``d`` = the possibly-double charges its records
  already report, and ``share = ⌊H · min(m, N) / N⌋`` when ``H ≥ 0`` or the whole deficit ``H`` when
  ``H < 0``.

**The bound.** If the chunks partition the list's unique items (the example's ``chunk`` task
de-duplicates before splitting) and nothing else spends from the account, the fan-out's charges
over every chunk and every try are at most ``Σ (n_i + share_i) ≤ N + H = B0 − r``, so the account
ends at or above the reserve — whatever the chunks' interleaving, the number of workers, or a
worker lost mid-run (its in-flight requests are counted by ``k`` in the retry). The price is
conservatism: with ``H < 0`` every chunk gives up the whole deficit, and a chunk's share of the
headroom is not lent to another. Spending by others (another DAG on the same account) after the
sensor's read is outside the bound; each chunk's own floor (``credit_reserve``) still applies to
the balance it sees.

This module knows no Airflow: the operator calls :meth:`CreditPlan.spend_limit` and passes the
result to the engine (``BatchOptions.spend_limit``).
"""

from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CreditPlan:
    """What the credits sensor saw for the whole list: ``remaining`` (B0), ``needed`` (N), ``reserve`` (r)."""

    remaining: int
    needed: int
    reserve: int

    def __post_init__(self) -> None:
        for name in ("remaining", "needed", "reserve"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (value < 0 and name != "remaining"):
                raise ValueError(f"credit_plan {name} must be an int >= 0, got {value!r}")

    @property
    def headroom(self) -> int:
        """``H = B0 − r − N``: credits above the list's need and the reserve (negative: a deficit)."""
        return self.remaining - self.reserve - self.needed

    def share(self, chunk_needed: int) -> int:
        """The part of the headroom a chunk needing ``chunk_needed`` credits may use (≤ 0 on a deficit)."""
        headroom = self.headroom
        if headroom < 0:
            return headroom
        if self.needed <= 0:
            return 0
        return headroom * min(chunk_needed, self.needed) // self.needed

    def spend_limit(self, chunk_needed: int, possibly_charged: int = 0, double_charged: int = 0) -> int:
        """Paid requests one try of a chunk may send so that the whole fan-out keeps the reserve.

        :param chunk_needed: credits the chunk's plan needs now (``BatchPlan.credits_needed``).
        :param possibly_charged: its items in flight when an earlier try ended (maybe charged).
        :param double_charged: possibly-double charges its records already report.
        """
        limit = min(chunk_needed, self.needed) - possibly_charged - double_charged + self.share(chunk_needed)
        return max(0, limit)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_value(cls, value: Any) -> CreditPlan:
        """A ``CreditPlan`` from the sensor's XCom: a dict, its JSON, or its Python repr (a template).

        :raises ValueError: with what was given.
        """
        data = value
        if isinstance(value, str):
            try:
                data = json.loads(value)
            except ValueError:
                try:
                    data = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    data = None
        if isinstance(data, CreditPlan):
            return data
        if not isinstance(data, dict) or not {"remaining", "needed", "reserve"} <= data.keys():
            raise ValueError(
                "credit_plan must be the credits sensor's credit_plan XCom, a dict with remaining, needed "
                f"and reserve; got {value!r}"
            )
        return cls(remaining=data["remaining"], needed=data["needed"], reserve=data["reserve"])
