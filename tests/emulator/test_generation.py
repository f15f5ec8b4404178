"""The emulator's generation route: the contract's checks, cost, refunds, concurrency and listing."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from airflow_provider_stablecog.emulator.state import GENERATION_MODEL_ID, SDXL_MODEL_ID
from tests.emulator.helpers import AUTH, make_config, state_of

CREATE = "/v1/image/generation/create"


def create(client, **body):
    body.setdefault("prompt", "a lighthouse")
    return client.post(CREATE, json=body, headers=AUTH)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"width": 2000, "height": 512}, 400, "Width is too large, max is: 1536"),
        ({"height": 128}, 400, "Height is too small, min is: 256"),
        ({"guidance_scale": 0.5}, 400, "Guidance scale is too small, min is: 1.000000"),
        ({"inference_steps": 5}, 400, "Inference steps is too small, min is: 10"),
        (
            {"width": 1536, "height": 1536},
            400,
            "Pick fewer inference steps or smaller dimensions: 1536 - 1536 - 30",
        ),
        ({"num_outputs": 5}, 400, "Number of outputs can't be more than 4"),
        ({"width": 512.0}, 400, "json_parse_error"),
        ({"model_id": "not-a-uuid"}, 400, "json_parse_error"),
        (
            {"model_id": "00000000-0000-4000-8000-000000000000", "width": 512, "height": 512},
            400,
            "invalid_model_id",
        ),
        ({"init_image_url": "ftp://x/y.png"}, 400, "invalid_init_image_url"),
        ({"num_outputs": 0}, 400, "insufficient_credits"),
        ({"prompt": "a NUDE statue"}, 400, "nsfw_prompt"),
    ],
)
def test_refusals_charge_nothing(app_client, body, status, error):
    response = create(app_client, **body)
    assert response.status_code == status and response.json()["error"] == error
    assert state_of(app_client).ledger.charged == 0


def test_unknown_model_without_a_size_crashes_without_json(app_client):
    response = create(app_client, model_id="00000000-0000-4000-8000-000000000000")
    assert response.status_code == 502 and "json" not in response.headers["content-type"]
    assert state_of(app_client).ledger.charged == 0


def test_cost_settings_listing_and_upscale_by_id(app_client):
    answer = create(
        app_client,
        prompt="a  red\nfox",
        num_outputs=3,
        width=256,
        height=320,
        seed=9,
        scheduler_id="00000000-0000-4000-8000-000000000000",
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["remaining_credits"] == 97 and len(body["outputs"]) == 3
    settings = body["settings"]
    assert settings["seed"] == 9 and settings["model_id"] == GENERATION_MODEL_ID
    assert settings["scheduler_id"] != "00000000-0000-4000-8000-000000000000"  # silently swapped
    image = app_client.get(body["outputs"][0]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    again = create(app_client, prompt="a red fox", num_outputs=3, width=256, height=320, seed=9)
    assert app_client.get(again.json()["outputs"][0]["url"]).content == image.content  # deterministic

    listing = app_client.get("/v1/image/generation/outputs?per_page=300", headers=AUTH).json()
    mine = [o for o in listing["outputs"] if o["generation"]["seed"] == 9]
    assert len(mine) == 6 and mine[0]["generation"]["prompt"]["text"] == "a red fox"
    assert len({o["generation"]["id"] for o in mine}) == 2
    assert {o["id"] for o in mine[:3]} == {o["id"] for o in again.json()["outputs"]}  # newest first
    by_model = app_client.get(f"/v1/image/generation/outputs?model_ids={SDXL_MODEL_ID}", headers=AUTH).json()
    assert by_model["outputs"] == []

    output_id = body["outputs"][0]["id"]
    first = app_client.post("/v1/image/upscale/create", json={"input": output_id}, headers=AUTH).json()
    second = app_client.post("/v1/image/upscale/create", json={"input": output_id}, headers=AUTH).json()
    assert first["remaining_credits"] == 93 and second["outputs"][0]["upscaled_image_url"]
    assert state_of(app_client).snapshot()["net_charged"] == 7  # 3 + 3 + 1 upscale, the second free


def test_worker_failures_refund_every_credit(make_client):
    client = make_client(faults={"worker_failure": 1.0})
    response = create(client, num_outputs=4, width=256, height=256)
    assert response.status_code == 500 and response.json()["error"] == "runpod_failed"
    ledger = state_of(client).snapshot()
    assert ledger["charged"] == 4 and ledger["refunded"] == 4 and ledger["balance"] == 100


def test_generation_has_its_own_concurrency_counter():
    """Plan 1: two generations and two upscales run at once (plan + 1 each), not four of one kind."""
    from airflow_provider_stablecog.emulator.app import create_app

    app = create_app(make_config(latency=0.3, plan_concurrency=1, credits=100))
    state = state_of(app)
    output_id = next(o.id for o in state.outputs_of(state.default_account) if o.upscaled_name is None)

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator", timeout=30) as client:
            gens = [
                client.post(CREATE, json={"prompt": f"p{i}", "width": 256, "height": 256}, headers=AUTH)
                for i in range(4)
            ]
            ups = [
                client.post(
                    "/v1/image/upscale/create",
                    json={"input": output_id if i == 0 else f"http://emulator/samples/{20 + i}x20.png"},
                    headers=AUTH,
                )
                for i in range(4)
            ]
            answers = await asyncio.gather(*gens, *ups)
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]

    asyncio.run(go())
    ledger = state.snapshot()
    assert ledger["max_generations_in_flight"] == 2
    assert ledger["max_in_flight"] == 2
    assert ledger["net_charged"] == 4 * 2 + 4


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("start_dt=2026-01-01T00:00:00Z&widths=512,768", 200),
        ("start_dt=yesterday", 400),
        ("heights=big", 400),
        ("order=sideways", 400),
        ("model_ids=not-a-uuid", 400),
        ("order=asc&per_page=2", 200),
    ],
)
def test_listing_filters_are_validated(app_client, query, status):
    response = app_client.get(f"/v1/image/generation/outputs?{query}", headers=AUTH)
    assert response.status_code == status, response.text
    if "order=asc" in query:
        outputs = response.json()["outputs"]
        times = [o["generation"]["created_at"] for o in outputs]
        assert times == sorted(times)  # oldest generation first
