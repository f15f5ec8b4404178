"""The hook and client against a real emulator process: every route, every error, real HTTP."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from airflow_provider_stablecog import exceptions as exc
from airflow_provider_stablecog.client import RetryPolicy, StablecogClient
from airflow_provider_stablecog.emulator.testing import run_emulator
from airflow_provider_stablecog.hooks.stablecog import StablecogHook
from tests.conftest import fresh_emulator

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05, jitter=0.01)


@pytest.fixture(scope="module")
def emulator():
    with run_emulator(latency=0.05, credits=50, plan_concurrency=2, rate_limit=0) as emu:
        yield emu


@pytest.fixture
def emu(emulator, monkeypatch):
    """The shared emulator, reset to a known state, and the default connection pointing at it."""
    return fresh_emulator(emulator, monkeypatch, plan_concurrency=2)


def _client(emu, key=None, **kw) -> StablecogClient:
    return StablecogClient(
        key or emu.api_key, emu.base_url, rate_limit=None, retry=kw.pop("retry", FAST_RETRY), **kw
    )


def _download_size(client, url) -> tuple[int, int]:
    buf = io.BytesIO()
    buf.close = lambda: None
    client.download(url, lambda: buf)
    buf.seek(0)
    return Image.open(buf).size


def test_must_show_upscale_is_4x_and_costs_one_credit(emu):
    hook = StablecogHook()
    before = hook.get_credits().total_remaining_credits
    result = hook.upscale(emu.sample_url("256x192.png"))
    assert _download_size(hook.client, result.upscaled_image_url) == (1024, 768)
    assert result.remaining_credits == before - 1 == hook.get_credits().total_remaining_credits


def test_test_connection_and_uri_form(emu, monkeypatch):
    assert StablecogHook().test_connection() == (True, f"Connected to {emu.base_url}: 50 credits remaining")
    monkeypatch.setenv("AIRFLOW_CONN_STABLECOG_DEFAULT", emu.connection_uri())
    assert StablecogHook().test_connection()[0] is True


def test_models_defaults_health_outputs(emu):
    hook = StablecogHook()
    models = hook.list_upscale_models()
    default = hook.get_upscale_defaults()
    assert default in {m.id for m in models} and any(m.is_default and m.id == default for m in models)
    assert hook.health() is True
    outputs = list(hook.iter_generation_outputs(per_page=3))
    assert len(outputs) == len(emu.output_ids()) and len({o.id for o in outputs}) == len(outputs)
    assert {o.id for o in outputs if o.is_upscaled} == set(emu.output_ids(upscaled=True))
    only = hook.list_generation_outputs(upscaled="only", per_page=300).outputs
    assert all(o.is_upscaled for o in only)


def test_output_id_inputs(emu):
    hook = StablecogHook()
    fresh, done = emu.output_ids(upscaled=False)[0], emu.output_ids(upscaled=True)[0]
    first = hook.upscale(fresh)
    assert first.remaining_credits == 49
    again = hook.upscale(done)
    assert again.remaining_credits == 49  # already upscaled: free, at once
    assert again.upscaled_image_url != again.output.url


def test_upload_then_upscale_by_key(emu, tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(path)
    hook = StablecogHook()
    key = hook.upload_image(path)
    assert key.startswith("s3://")
    result = hook.upscale(key)
    assert _download_size(hook.client, result.upscaled_image_url) == (120, 80)


@pytest.mark.parametrize(
    ("make_input", "cls", "code"),
    [
        (lambda e: "not a url", exc.StablecogInputError, "invalid_image_url"),
        (lambda e: "00000000-0000-4000-8000-000000000000", exc.StablecogInputError, "output_not_found"),
        (
            lambda e: e.sample_url("bad/not-an-image.png"),
            exc.StablecogInputError,
            "image_url_width_height_error",
        ),
        (
            lambda e: e.sample_url("bad/wrong-type.png"),
            exc.StablecogInputError,
            "image_url_width_height_error",
        ),
        (
            lambda e: e.sample_url("bad/no-length.png"),
            exc.StablecogInputError,
            "image_url_width_height_error",
        ),
        (lambda e: e.sample_url("bad/too-big.png"), exc.StablecogInputError, "image_url_width_height_error"),
        (
            lambda e: "s3://0123456789abcdef/00000000-0000-4000-8000-000000000000.png",
            exc.StablecogInputError,
            "init_image_not_found",
        ),
    ],
)
def test_per_input_errors(emu, make_input, cls, code):
    with pytest.raises(cls) as info, _client(emu) as client:
        client.upscale(make_input(emu))
    assert info.value.code == code
    assert emu.ledger()["net_charged"] == 0


def test_model_errors(emu):
    with _client(emu) as client:
        with pytest.raises(exc.StablecogInputError) as info:
            client.upscale(emu.sample_url("20x20.png"), model_id="00000000-0000-4000-8000-000000000001")
        assert info.value.code == "invalid_model_id"
        with pytest.raises(exc.StablecogInputError) as info:
            client.upscale(emu.sample_url("20x20.png"), model_id="swinir")
        assert info.value.code == "json_parse_error"


def test_auth_errors(emu):
    with _client(emu, key="sc-" + "0" * 64) as client, pytest.raises(exc.StablecogAuthError) as info:
        client.get_credits()
    assert info.value.code == "Unauthorized" and info.value.status_code == 401
    banned = "sc-" + "b" * 64
    emu.add_account(api_key=banned, banned=True)
    with _client(emu, key=banned) as client, pytest.raises(exc.StablecogAuthError) as info:
        client.upscale(emu.sample_url("20x20.png"))
    assert info.value.code == "user_banned" and info.value.status_code == 403


def test_image_not_owned(emu, tmp_path):
    other = "sc-" + "c" * 64
    emu.add_account(api_key=other, credits=5)
    with _client(emu) as mine:
        key = mine.upload_image(_png_bytes(), filename="a.png")
    with _client(emu, key=other) as theirs, pytest.raises(exc.StablecogInputError) as info:
        theirs.upscale(key)
    assert info.value.code == "image_not_owned" and info.value.status_code == 401


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def test_insufficient_credits_is_not_retried(emu):
    emu.set_balance(0)
    with _client(emu) as client, pytest.raises(exc.InsufficientCreditsError):
        client.upscale(emu.sample_url("20x20.png"))
    assert emu.ledger()["attempts_by_input"].get(emu.sample_url("20x20.png"), 0) <= 1


def test_429_plain_text_with_retry_after_is_retried(emu):
    emu.configure(rate_limit=1)
    with _client(emu, retry=RetryPolicy(max_attempts=5, initial_backoff=0.01, jitter=0)) as client:
        for _ in range(3):
            client.get_credits()  # reads get 2/s: the third in one second is limited and retried
    assert emu.ledger()["rate_limited"] >= 1


def test_faults_are_classified_and_recovered(emu):
    emu.configure(faults={"timeout": 0.5}, fault_seed=1)
    # 12 items at 0.5: P(no fault) ~ 0.02 %; 20 attempts: P(an item never succeeds) negligible
    with _client(
        emu, retry=RetryPolicy(max_attempts=20, initial_backoff=0.01, max_backoff=0.02, jitter=0)
    ) as client:
        for i in range(12):
            client.upscale(emu.sample_url(f"{20 + i}x20.png"))
    ledger = emu.ledger()
    assert ledger["faults_injected"].get("timeout", 0) >= 1
    assert ledger["refunded"] == ledger["faults_injected"]["timeout"]
    assert ledger["net_charged"] == 12


def test_async_credits(emu):
    import asyncio

    assert asyncio.run(StablecogHook().aget_credits()).total_remaining_credits == 50
    assert json.loads(emu.connection_json())["password"] == emu.api_key
