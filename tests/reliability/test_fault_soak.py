"""The short fault soak (the 1,000-image one is ``./dev soak``): 100 images, every fault at once."""

from __future__ import annotations

import pytest

from airflow_provider_stablecog.emulator.testing import run_emulator
from tests.reliability.soak import CONCURRENCY, FAULTS, run_soak

pytestmark = pytest.mark.slow
IMAGES = 100


@pytest.fixture(scope="module")
def emulator():
    with run_emulator(
        latency=0.03, credits=IMAGES * 3, plan_concurrency=CONCURRENCY * 2, rate_limit=0
    ) as emu:
        yield emu


def test_short_soak_loses_nothing_and_charges_exactly(emulator, tmp_path):
    result = run_soak(emulator, IMAGES, seed=11, workdir=tmp_path)
    print(result.summary_line())
    assert result.problems() == []
    assert result.lost == 0 and result.duplicates == 0
    assert result.charged == result.delivered + result.charged_response_lost
    assert sum(result.statuses.values()) == IMAGES
    assert set(result.faults) >= {"timeout", "worker_failure", "spurious_429"}  # the mix really happened
    assert sum(result.faults.values()) >= IMAGES * sum(FAULTS.values()) / 2


def test_same_seed_same_faults(emulator, tmp_path):
    """Fault draws are a pure function of (seed, input, attempt): the same run twice matches."""
    first = run_soak(emulator, 50, seed=23, workdir=tmp_path / "a")
    second = run_soak(emulator, 50, seed=23, workdir=tmp_path / "b")
    assert first.problems() == [] and second.problems() == []
    assert first.faults == second.faults and sum(first.faults.values()) > 0
    assert (first.statuses, first.charged) == (second.statuses, second.charged)
