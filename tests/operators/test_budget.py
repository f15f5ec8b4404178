"""A budget (``max_credits``): the most one task instance may spend across all its tries.

Judged by the emulator's ledger. What earlier tries spent is read back from the ledger (the
destination, or the task state store without one), so a retry cannot reset it.
"""

from __future__ import annotations

import pytest

from airflow_provider_stablecog.compat import AirflowException, AirflowFailException
from airflow_provider_stablecog.exceptions import StablecogBudgetExceededError
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.utils.storage import read_manifest
from tests.operators.conftest import MemoryStateStore, charged, make_context


class FakeTI:
    """The task instance fields the operator reads (one instance across tries, like Airflow's)."""

    def __init__(self, run_id: str = "manual__1", map_index: int = -1) -> None:
        self.dag_id, self.task_id, self.run_id, self.map_index = "budget_dag", "upscale", run_id, map_index
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def _context(store: MemoryStateStore | None, ti: FakeTI) -> dict:
    context = make_context(store)
    if store is None:  # Airflow 3.1 / 3.2: no task state store
        context.pop("task_state_store")
    context["ti"] = ti
    return context


def _op(inputs: list[str], destination=None, **kwargs) -> UpscaleOperator:
    return UpscaleOperator(
        task_id="upscale",
        inputs=inputs,
        destination=str(destination) if destination is not None else None,
        max_concurrency=4,
        progress_interval=0,
        **kwargs,
    )


@pytest.mark.parametrize("where", ["state store and destination", "destination only", "state store only"])
def test_a_budget_of_10_with_40_items_spends_exactly_10_over_two_tries(emu, tmp_path, where):
    inputs = [emu.sample_url(f"{30 + i}x21.png") for i in range(40)]
    store = None if where == "destination only" else MemoryStateStore()
    dest = None if where == "state store only" else tmp_path / "out"
    ti = FakeTI()

    # try 1: the account runs dry after 6 upscales (a retryable failure: top up, retry)
    emu.set_balance(6)
    with pytest.raises(AirflowException) as first:
        _op(inputs, dest, max_credits=10).execute(_context(store, ti))
    assert not isinstance(first.value, AirflowFailException)
    assert charged(emu) == 6

    # try 2, after a top-up: the retry reads the 6 already spent and stops at 10
    emu.add_credits(1000)
    op = _op(inputs, dest, max_credits=10)
    with pytest.raises(AirflowFailException, match="max_credits=10 is spent") as second:
        op.execute(_context(store, ti))
    assert isinstance(second.value.__cause__, StablecogBudgetExceededError)
    assert charged(emu) == 10  # the emulator's ledger: exactly the budget over both tries
    summary = ti.xcom["summary"]
    assert summary["budget_max_credits"] == 10
    assert summary["budget_spent"] == 10 and summary["budget_left"] == 0
    assert summary["credits_charged_this_try"] == 4

    # try 3: nothing more is spent, whatever happens
    with pytest.raises(AirflowFailException, match="max_credits"):
        _op(inputs, dest, max_credits=10).execute(_context(store, ti))
    assert charged(emu) == 10


def test_work_past_the_budget_is_not_started_with_what_to_do(emu, tmp_path):
    inputs = [emu.sample_url(f"{30 + i}x22.png") for i in range(8)]
    op = _op(inputs, tmp_path / "out", max_credits=5, fail_on_not_started=False)
    records = op.execute(_context(MemoryStateStore(), FakeTI()))
    assert [r["status"] for r in records].count("upscaled") == 5
    left = [r for r in records if r["status"] == "not_started"]
    assert len(left) == 3 and {r["error"] for r in left} == {"max_credits"}
    messages = [
        r.get("message", "") for r in read_manifest(tmp_path / "out").values() if r["status"] == "not_started"
    ]
    assert len(messages) == 3 and all("raise max_credits and clear the task" in m for m in messages), messages
    assert op.summary["budget_spent"] == 5 and op.summary["budget_left"] == 0
    assert charged(emu) == 5


def test_the_budget_belongs_to_the_task_instance_not_the_destination(emu, tmp_path):
    """Another run (or mapped chunk) writing the same destination has a budget of its own."""
    dest = tmp_path / "shared"
    first = [emu.sample_url(f"{30 + i}x23.png") for i in range(6)]
    _op(first, dest, max_credits=6).execute(_context(MemoryStateStore(), FakeTI("run_a")))
    assert charged(emu) == 6
    more = first + [emu.sample_url(f"{30 + i}x24.png") for i in range(6)]
    op = _op(more, dest, max_credits=4, fail_on_not_started=False)
    records = op.execute(_context(MemoryStateStore(), FakeTI("run_b")))
    statuses = [r["status"] for r in records]
    assert statuses.count("skipped") == 6 and statuses.count("upscaled") == 4
    assert charged(emu) == 10
    assert op.summary["budget_spent"] == 4


def test_mapped_chunks_each_have_their_own_budget(emu, tmp_path):
    dest = tmp_path / "chunks"
    for index in range(2):
        chunk = [emu.sample_url(f"{40 + i}x{25 + index}.png") for i in range(5)]
        _op(chunk, dest, max_credits=3, fail_on_not_started=False).execute(
            _context(MemoryStateStore(), FakeTI(map_index=index))
        )
    assert charged(emu) == 6


def test_the_dry_run_reports_against_the_budget(emu, tmp_path):
    inputs = [emu.sample_url(f"{30 + i}x26.png") for i in range(12)]
    plan = _op(inputs, tmp_path / "out", max_credits=10, dry_run=True).execute(
        _context(MemoryStateStore(), FakeTI())
    )
    assert plan["credits_needed"] == 12 and plan["max_credits"] == 10
    assert plan["budget_spent"] == 0 and plan["budget_left"] == 10 and plan["within_budget"] is False
    assert charged(emu) == 0


def test_free_output_ids_need_no_budget(emu):
    free = emu.output_ids(upscaled=True)[:3]
    records = _op(free, max_credits=0).execute(_context(MemoryStateStore(), FakeTI()))
    assert {r["status"] for r in records} == {"upscaled"}
    assert charged(emu) == 0


@pytest.mark.parametrize("bad", [-1, 2.5, "ten", True])
def test_a_bad_budget_is_refused_at_parse_time(bad):
    with pytest.raises(ValueError, match="max_credits must be"):
        UpscaleOperator(task_id="u", inputs=["x"], max_credits=bad)


def test_a_templated_budget_is_rendered_then_checked(emu, tmp_path):
    inputs = [emu.sample_url(f"{30 + i}x27.png") for i in range(4)]
    op = _op(inputs, tmp_path / "out", max_credits="{{ params.approved }}", fail_on_not_started=False)
    op.max_credits = "3"  # what the template rendered to
    records = op.execute(_context(MemoryStateStore(), FakeTI()))
    assert [r["status"] for r in records].count("upscaled") == 3 and charged(emu) == 3
    op.max_credits = "None"
    with pytest.raises(ValueError, match="max_credits must be a whole number"):
        op.execute(_context(MemoryStateStore(), FakeTI("other")))


def test_the_generate_operator_spends_within_its_budget_at_each_prompts_price(emu, tmp_path):
    """num_outputs=2: each prompt costs 2 credits; a budget of 7 affords 3 prompts, across two tries."""
    from airflow_provider_stablecog.operators.generate import StablecogGenerateOperator

    prompts = [f"a lighthouse, study {i}" for i in range(6)]
    store, ti = MemoryStateStore(), FakeTI()

    def op() -> StablecogGenerateOperator:
        return StablecogGenerateOperator(
            task_id="generate", prompts=prompts, num_outputs=2, width=256, height=256,
            destination=str(tmp_path / "gen"), max_credits=7, max_concurrency=2, progress_interval=0,
        )  # fmt: skip

    emu.set_balance(4)  # try 1: two prompts, then the account is dry
    with pytest.raises(AirflowException):
        op().execute(_context(store, ti))
    assert charged(emu) == 4
    emu.add_credits(1000)
    with pytest.raises(AirflowFailException, match="max_credits=7 is spent"):
        op().execute(_context(store, ti))
    assert charged(emu) == 6  # one more prompt (2 credits); a fourth would take it to 8 > 7
    assert ti.xcom["summary"]["budget_spent"] == 6 and ti.xcom["summary"]["budget_left"] == 1
