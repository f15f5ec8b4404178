from __future__ import annotations

import pytest

from airflow_provider_stablecog.emulator.testing import run_emulator
from tests.conftest import fresh_emulator
from tests.reliability.support import MemoryStateStore, make_context

__all__ = ["MemoryStateStore", "charged", "make_context", "sample_images"]


@pytest.fixture(scope="module")
def emulator():
    with run_emulator(latency=0.05, credits=10_000, plan_concurrency=4, rate_limit=0) as emu:
        yield emu


@pytest.fixture
def emu(emulator, monkeypatch):
    """The shared emulator, reset to a known state, and the default connection pointing at it."""
    return fresh_emulator(emulator, monkeypatch, plan_concurrency=4)


def charged(emu) -> int:
    return emu.ledger()["net_charged"]


def sample_images(tmp_path, sizes=((40, 30), (50, 20), (64, 64))):
    from PIL import Image

    paths = []
    for i, (w, h) in enumerate(sizes):
        p = tmp_path / f"local-{i}-{w}x{h}.png"
        Image.new("RGB", (w, h), (40 * i % 255, 120, 200)).save(p)
        paths.append(str(p))
    return paths
