"""The reserve across concurrent chunks of a fan-out (``credit_plan``), judged by the emulator's ledger."""

from __future__ import annotations

import random
import threading

import pytest

from airflow_provider_stablecog.compat import AirflowException
from airflow_provider_stablecog.fanout import CreditPlan
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from tests.operators.conftest import MemoryStateStore, make_context

# -- the share, alone --------------------------------------------------------------------------


def test_a_chunk_may_spend_its_items_and_its_part_of_the_headroom():
    plan = CreditPlan(remaining=130, needed=100, reserve=10)  # headroom 20
    assert plan.headroom == 20
    assert plan.spend_limit(25) == 25 + 5
    assert plan.spend_limit(25, possibly_charged=2, double_charged=1) == 25 - 3 + 5
    deficit = CreditPlan(remaining=95, needed=100, reserve=10)  # 15 short
    assert deficit.spend_limit(25) == 10  # every chunk gives up the whole deficit
    assert deficit.spend_limit(10) == 0  # never negative
    assert CreditPlan(remaining=50, needed=0, reserve=0).spend_limit(0) == 0


def test_the_chunks_limits_add_up_to_at_most_the_balance_above_the_reserve():
    rng = random.Random(17)
    for _ in range(2000):
        chunks = [rng.randint(0, 40) for _ in range(rng.randint(1, 12))]
        needed = sum(chunks)
        reserve = rng.randint(0, 30)
        remaining = max(0, needed + reserve + rng.randint(-60, 60))
        plan = CreditPlan(remaining, needed, reserve)
        total = sum(plan.spend_limit(n) for n in chunks)
        assert total <= max(0, remaining - reserve), (chunks, plan, total)
        if plan.headroom >= 0:
            assert all(plan.spend_limit(n) >= n for n in chunks)  # enough credits: nothing held back


def test_a_retry_counts_what_its_killed_try_may_have_been_charged():
    """Try 1 was paid for p items and died with k in flight; try 2 may send m - k (+ share)."""
    plan = CreditPlan(remaining=60, needed=60, reserve=0)
    n, p, k = 30, 12, 3
    first_try_cost = p + k  # k charged by the server, never answered to the dead try
    second_try = plan.spend_limit(n - p, possibly_charged=k)
    assert first_try_cost + second_try <= n


@pytest.mark.parametrize(
    "value",
    [
        {"remaining": 9, "needed": 5, "reserve": 1},
        '{"remaining": 9, "needed": 5, "reserve": 1}',
        "{'remaining': 9, 'needed': 5, 'reserve': 1}",  # a template rendered without native objects
    ],
)
def test_the_sensor_xcom_is_read_in_every_form_it_arrives_in(value):
    assert CreditPlan.from_value(value) == CreditPlan(9, 5, 1)


@pytest.mark.parametrize(
    "value", [None, 5, "nonsense", {"remaining": 1}, {"remaining": 1, "needed": -1, "reserve": 0}]
)
def test_a_wrong_credit_plan_says_what_is_expected(value):
    with pytest.raises(ValueError, match="credit_plan"):
        CreditPlan.from_value(value)


# -- chunks running at once against one account ------------------------------------------------


def _chunks(emu, count: int, size: int, tag: int) -> list[list[str]]:
    return [[emu.sample_url(f"{20 + c}x{30 + i}.png", seed=tag) for i in range(size)] for c in range(count)]


def _run_concurrently(emu, chunks, plan: CreditPlan | None, reserve: int) -> list[BaseException | None]:
    """Every chunk as its own UpscaleOperator in its own thread, started together (as mapped tasks on
    several workers are); returns each chunk's exception (None when it succeeded)."""
    outcome: list[BaseException | None] = [None] * len(chunks)
    start = threading.Barrier(len(chunks))

    def run(i: int) -> None:
        op = UpscaleOperator(
            task_id=f"chunk{i}",
            inputs=chunks[i],
            max_concurrency=2,
            credit_reserve=reserve,
            credit_plan=plan.as_dict() if plan is not None else None,
            progress_interval=0,
        )
        start.wait()
        try:
            op.execute(make_context(MemoryStateStore()))
        except BaseException as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return outcome


def test_concurrent_chunks_with_exactly_enough_credits_deliver_everything_and_keep_the_reserve(emu):
    chunks = _chunks(emu, count=4, size=8, tag=1)
    reserve, needed = 5, 32
    emu.set_balance(needed + reserve)
    emu.configure(latency=0.05, latency_jitter=0.1, fault_seed=3)
    errors = _run_concurrently(emu, chunks, CreditPlan(needed + reserve, needed, reserve), reserve)
    assert errors == [None] * 4, errors
    ledger = emu.ledger()
    assert ledger["net_charged"] == needed and ledger["balance"] == reserve


def test_concurrent_chunks_short_of_credits_never_cross_the_reserve(emu):
    """The balance dropped below need + reserve after the sensor (another spender): the chunks stop
    at their shares, and the account keeps the reserve whatever the interleaving."""
    chunks = _chunks(emu, count=4, size=8, tag=2)
    reserve, needed = 5, 32
    balance = needed + reserve - 6  # 6 short
    emu.set_balance(balance)
    emu.configure(latency=0.05, latency_jitter=0.1, fault_seed=4)
    errors = _run_concurrently(emu, chunks, CreditPlan(balance, needed, reserve), reserve)
    assert all(isinstance(e, AirflowException) and "share of the fan-out" in str(e) for e in errors), errors
    ledger = emu.ledger()
    assert ledger["balance"] >= reserve, ledger["balance"]
    assert ledger["net_charged"] == 4 * (8 - 6)  # each chunk gave up the whole deficit
