"""The client's generation routes against requests-mock: body, typed result, error classes, lost answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests

from airflow_provider_stablecog import exceptions as exc
from tests.conftest import BASE_URL

CREATE = f"{BASE_URL}/v1/image/generation/create"
OUTPUTS = f"{BASE_URL}/v1/image/generation/outputs"
MODEL = "048b4aa3-5586-47ed-900f-f4341c96bdb2"
GENERATED = {
    "outputs": [
        {
            "id": "11111111-1111-4111-8111-111111111111",
            "url": "https://b.test/1.jpeg",
            "image_url": "https://b.test/1.jpeg",
        },
        {
            "id": "22222222-2222-4222-8222-222222222222",
            "url": "https://b.test/2.jpeg",
            "image_url": "https://b.test/2.jpeg",
        },
    ],
    "remaining_credits": 1389,
    "settings": {"model_id": MODEL, "width": 512, "height": 512, "num_outputs": 2, "seed": 7},
}


def test_generate_sends_only_what_is_given_and_types_the_answer(client, requests_mock):
    m = requests_mock.post(CREATE, json=GENERATED)
    result = client.generate("a fox", model_id=MODEL, width=512, height=512, num_outputs=2, seed=7)
    assert m.last_request.json() == {
        "prompt": "a fox",
        "model_id": MODEL,
        "width": 512,
        "height": 512,
        "num_outputs": 2,
        "seed": 7,
    }
    assert result.output_ids == [o["id"] for o in GENERATED["outputs"]]
    assert result.outputs[1].url == "https://b.test/2.jpeg"
    assert result.remaining_credits == 1389 and result.seed == 7


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (400, {"error": "nsfw_prompt", "settings": {}}, exc.StablecogInputError, "nsfw_prompt"),
        (400, {"error": "Height is too large, max is: 1536"}, exc.StablecogInputError, None),
        (400, {"error": "invalid_scheduler_id"}, exc.StablecogInputError, "invalid_scheduler_id"),
        (401, {"error": "init_image_not_owned"}, exc.StablecogInputError, "init_image_not_owned"),
        (400, {"error": "insufficient_credits"}, exc.InsufficientCreditsError, "insufficient_credits"),
    ],
)
def test_generation_refusals_are_classified_and_sent_once(client, requests_mock, status, body, cls, code):
    m = requests_mock.post(CREATE, json=body, status_code=status)
    with pytest.raises(cls) as info:
        client.generate("a fox")
    assert m.call_count == 1
    assert info.value.code == (code or body["error"])


def test_a_lost_generation_answer_is_never_resent(client, requests_mock):
    m = requests_mock.post(CREATE, exc=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(exc.StablecogResponseLostError):
        client.generate("a fox")
    assert m.call_count == 1


def test_worker_failure_text_is_retried(client, requests_mock):
    m = requests_mock.post(
        CREATE, [{"json": {"error": "runpod_failed"}, "status_code": 500}, {"json": GENERATED}]
    )
    assert client.generate("a fox").output_ids and m.call_count == 2


def _output(output_id: str, prompt: str, seed: int, gen: str, created: str) -> dict:
    return {
        "id": output_id,
        "image_url": f"https://b.test/{output_id}.jpeg",
        "created_at": created,
        "generation": {
            "id": gen,
            "prompt": {"id": "p", "text": prompt},
            "seed": seed,
            "width": 512,
            "height": 512,
            "model_id": MODEL,
            "created_at": created,
        },
    }


def test_find_generation_outputs_matches_prompt_seed_and_time(client, requests_mock):
    page = {
        "outputs": [
            _output("o1", "a fox", 7, "g2", "2026-12-01T10:00:05.000Z"),
            _output("o2", "a fox", 7, "g2", "2026-12-01T10:00:05.000Z"),
            _output("o3", "a cat", 7, "g1", "2026-12-01T10:00:03.000Z"),
            _output("o4", "a fox", 8, "g1", "2026-12-01T10:00:02.000Z"),
            _output("o5", "a fox", 7, "g0", "2026-12-01T09:00:00.000Z"),  # before the intent
        ],
        "total": 5,
    }
    m = requests_mock.get(OUTPUTS, json=page)
    groups = client.find_generation_outputs(
        prompt="a fox",
        seed=7,
        created_after=datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
        width=512,
        model_id=MODEL,
    )
    assert [[o.id for o in g] for g in groups] == [["o1", "o2"]]
    assert m.last_request.qs["per_page"] == ["300"] and m.last_request.qs["model_ids"] == [MODEL]
