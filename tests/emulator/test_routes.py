"""In-process route tests (TestClient): every route and error code of the contract."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from airflow_provider_stablecog.emulator import imaging
from airflow_provider_stablecog.emulator.state import AURA_SR_MODEL_ID, SWIN_IR_MODEL_ID
from tests.emulator.helpers import AUTH, KEY, OTHER_AUTH, OTHER_KEY, add_other_account, state_of

UPSCALE = "/v1/image/upscale/create"
SAMPLE = "http://testserver/samples/64x48.png"
NIL_UUID = "00000000-0000-4000-8000-000000000000"


def image_of(client: TestClient, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert int(response.headers["content-length"]) == len(response.content)
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def ledger(client: TestClient) -> dict:
    return client.get("/_emulator/ledger").json()


def upload(client: TestClient, data: bytes, auth: dict = AUTH, name: str = "in.png") -> object:
    files = {"file": (name, data, "application/octet-stream")}
    return client.post("/v1/image/upload", headers=auth, files=files)


# -- open routes --------------------------------------------------------------------------------


def test_health_models_defaults(app_client: TestClient):
    assert app_client.get("/v1/health").json() == {"status": "ok"}
    models = app_client.get("/v1/image/upscale/models").json()["models"]
    assert {m["id"] for m in models} == {AURA_SR_MODEL_ID, SWIN_IR_MODEL_ID}
    assert [m["name"] for m in models if m["is_default"]] == ["AuraSR"]
    assert app_client.get("/v1/image/upscale/defaults").json() == {"model_id": AURA_SR_MODEL_ID}


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": KEY},
        {"Authorization": f"bearer {KEY}"},
        {"Authorization": "Bearer sc-unknown"},
        {"Authorization": f"Bearer  {KEY}"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", UPSCALE),
        ("POST", "/v1/image/upscale"),
        ("GET", "/v1/credits"),
        ("POST", "/v1/image/upload"),
        ("GET", "/v1/image/generation/outputs"),
    ],
)
def test_unauthorized(app_client: TestClient, headers, method, path):
    response = app_client.request(method, path, headers=headers, json={"input": SAMPLE})
    assert (response.status_code, response.json()) == (401, {"error": "Unauthorized"})


def test_banned_user_gets_403(app_client: TestClient):
    add_other_account(app_client, banned=True)
    for method, path in [("POST", UPSCALE), ("GET", "/v1/credits"), ("POST", "/v1/image/upload")]:
        response = app_client.request(method, path, headers=OTHER_AUTH, json={"input": SAMPLE})
        assert (response.status_code, response.json()) == (403, {"error": "user_banned"})


# -- credits and outputs ------------------------------------------------------------------------


def test_credits_shape(app_client: TestClient):
    body = app_client.get("/v1/credits", headers=AUTH).json()
    assert body["total_remaining_credits"] == 100
    (credit,) = body["credits"]
    assert credit["remaining_amount"] == 100 and credit["expires_at"] == "2100-01-01T05:00:00Z"
    assert set(credit["type"]) == {"id", "name", "amount", "description"}


def test_generation_outputs_pagination(app_client: TestClient):
    first = app_client.get("/v1/image/generation/outputs?per_page=3", headers=AUTH).json()
    assert first["total"] == 8 and len(first["outputs"]) == 3 and "next" in first
    seen = [o["id"] for o in first["outputs"]]
    cursor = first["next"]
    while cursor:
        page = app_client.get(
            "/v1/image/generation/outputs", params={"per_page": 3, "cursor": cursor}, headers=AUTH
        ).json()
        assert "total" not in page
        seen += [o["id"] for o in page["outputs"]]
        cursor = page.get("next")
    assert len(seen) == len(set(seen)) == 8
    everything = app_client.get("/v1/image/generation/outputs", headers=AUTH).json()
    assert [o["id"] for o in everything["outputs"]] == seen and "next" not in everything
    created = [o["created_at"] for o in everything["outputs"]]
    assert created == sorted(created, reverse=True)


def test_generation_outputs_filter_and_shape(app_client: TestClient):
    """As on the server: ``upscaled`` is validated and counted in ``total``, not applied to the page."""
    only_page = app_client.get("/v1/image/generation/outputs?upscaled=only", headers=AUTH).json()
    never_page = app_client.get("/v1/image/generation/outputs?upscaled=not", headers=AUTH).json()
    assert only_page["total"] == never_page["total"] == 4
    assert len(only_page["outputs"]) == len(never_page["outputs"]) == 8
    assert only_page["outputs"] == never_page["outputs"]
    assert app_client.get("/v1/image/generation/outputs?upscaled=yes", headers=AUTH).status_code == 400
    only = [o for o in only_page["outputs"] if "upscaled_image_url" in o]
    assert len(only) == 4
    output = only[0]
    assert {"id", "image_url", "created_at", "generation"} <= set(output)
    assert {"id", "width", "height", "prompt", "seed", "model_id", "created_at"} <= set(output["generation"])
    source = image_of(app_client, output["image_url"])
    upscaled = image_of(app_client, output["upscaled_image_url"])
    assert source.size == (output["generation"]["width"], output["generation"]["height"])
    assert upscaled.size == (source.width * 4, source.height * 4)


@pytest.mark.parametrize("query", ["per_page=0", "per_page=301", "per_page=abc", "upscaled=maybe"])
def test_generation_outputs_bad_params(app_client: TestClient, query):
    assert app_client.get(f"/v1/image/generation/outputs?{query}", headers=AUTH).status_code == 400


def test_seeded_outputs_are_deterministic(make_client):
    def ids(client: TestClient) -> list[str]:
        outputs = client.get("/v1/image/generation/outputs", headers=AUTH).json()["outputs"]
        return [o["id"] for o in outputs]

    def first_image(client: TestClient) -> bytes:
        output = client.get("/v1/image/generation/outputs", headers=AUTH).json()["outputs"][0]
        return client.get(output["image_url"]).content

    one, two, other = make_client(seed=1), make_client(seed=1), make_client(seed=2)
    assert ids(one) == ids(two) != ids(other)
    assert first_image(one) == first_image(two)


def test_unknown_output_file_is_404(app_client: TestClient):
    assert app_client.get("/outputs/nothing.jpeg").status_code == 404
    assert app_client.get("/outputs/..%2Fsecret").status_code == 404


# -- upscale: success paths -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [UPSCALE, "/v1/image/upscale"])
def test_upscale_url_success(app_client: TestClient, path):
    response = app_client.post(path, headers=AUTH, json={"input": SAMPLE})
    assert response.status_code == 200, response.text
    body = response.json()
    (output,) = body["outputs"]
    assert re.fullmatch(r"http://testserver/outputs/[0-9a-f-]{36}\.jpeg", output["upscaled_image_url"])
    assert output["url"] == output["upscaled_image_url"]
    assert body["remaining_credits"] == 99 and isinstance(body["remaining_credits"], int)
    assert body["settings"] == {"model_id": AURA_SR_MODEL_ID, "input": SAMPLE}
    image = image_of(app_client, output["upscaled_image_url"])
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (256, 192))
    books = ledger(app_client)
    assert (books["charged"], books["refunded"], books["delivered"]) == (1, 0, 1)
    assert books["charges_by_input"] == {SAMPLE: 1}


def test_upscale_with_explicit_model(app_client: TestClient):
    body = app_client.post(UPSCALE, headers=AUTH, json={"input": SAMPLE, "model_id": SWIN_IR_MODEL_ID}).json()
    assert body["settings"]["model_id"] == SWIN_IR_MODEL_ID


def test_upscale_output_id_then_already_upscaled_is_free(app_client: TestClient):
    outputs = app_client.get("/v1/image/generation/outputs?upscaled=not", headers=AUTH).json()["outputs"]
    target = next(o for o in outputs if "upscaled_image_url" not in o)  # the page is not filtered
    first = app_client.post(UPSCALE, headers=AUTH, json={"input": target["id"]}).json()
    assert first["remaining_credits"] == 99
    assert first["outputs"][0]["url"] == target["image_url"]
    upscaled_url = first["outputs"][0]["upscaled_image_url"]
    size = image_of(app_client, upscaled_url).size
    assert size == (target["generation"]["width"] * 4, target["generation"]["height"] * 4)
    again = app_client.post(UPSCALE, headers=AUTH, json={"input": target["id"]}).json()
    assert again["remaining_credits"] == 99
    expected = {"id": target["id"], "url": target["image_url"], "upscaled_image_url": upscaled_url}
    assert again["outputs"][0] == expected
    listed = app_client.get("/v1/image/generation/outputs?upscaled=only", headers=AUTH).json()["outputs"]
    assert target["id"] in {o["id"] for o in listed if "upscaled_image_url" in o}
    books = ledger(app_client)
    assert (books["charged"], books["free_answers"], books["delivered"]) == (1, 1, 2)


def test_seeded_upscaled_output_charges_nothing(app_client: TestClient):
    outputs = app_client.get("/v1/image/generation/outputs?upscaled=only", headers=AUTH).json()["outputs"]
    target = next(o for o in outputs if "upscaled_image_url" in o)
    body = app_client.post(UPSCALE, headers=AUTH, json={"input": target["id"].upper()}).json()
    assert body["remaining_credits"] == 100
    assert body["outputs"][0]["url"] == target["image_url"]
    assert body["outputs"][0]["upscaled_image_url"] == target["upscaled_image_url"]
    assert ledger(app_client)["charged"] == 0


def test_upload_then_upscale_by_s3_key(app_client: TestClient):
    response = upload(app_client, imaging.sample_bytes(40, 30, "webp"), name="x.webp")
    assert response.status_code == 200, response.text
    key = response.json()["object"]
    assert re.fullmatch(r"s3://[0-9a-f]+/[0-9a-f-]{36}\.webp", key)
    body = app_client.post(UPSCALE, headers=AUTH, json={"input": key}).json()
    assert body["settings"]["input"] == key
    assert image_of(app_client, body["outputs"][0]["upscaled_image_url"]).size == (160, 120)
    assert ledger(app_client)["uploads"] == 1


def test_multipart_upscale_with_file_and_data(app_client: TestClient):
    files = {"file": ("in.jpg", imaging.sample_bytes(30, 20, "jpg"), "image/jpeg")}
    data = {"data": f'{{"model_id":"{SWIN_IR_MODEL_ID}"}}'}
    response = app_client.post(UPSCALE, headers=AUTH, files=files, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["settings"]["model_id"] == SWIN_IR_MODEL_ID
    assert image_of(app_client, body["outputs"][0]["upscaled_image_url"]).size == (120, 80)
    data_only = app_client.post(UPSCALE, headers=AUTH, files={"data": (None, f'{{"input":"{SAMPLE}"}}')})
    assert data_only.status_code == 200, data_only.text


# -- upscale: errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "json_parse_error"),
        (b"[1, 2]", "json_parse_error"),
        (b'{"input": 5}', "json_parse_error"),
        (b'{"input": "%s", "model_id": "not-a-uuid"}' % SAMPLE.encode(), "json_parse_error"),
        (b'{"input": "%s", "model_id": 7}' % SAMPLE.encode(), "json_parse_error"),
        (b'{"input": "%s", "model_id": "%s"}' % (SAMPLE.encode(), NIL_UUID.encode()), "invalid_model_id"),
        (b'{"input": "ftp://example.com/a.png"}', "invalid_image_url"),
        (b'{"input": "just words"}', "invalid_image_url"),
        (b"{}", "invalid_image_url"),
        (b'{"input": "00000000-0000-4000-8000-000000000000"}', "output_not_found"),
        (b'{"input": "s3://nobody/none.png"}', "init_image_not_found"),
        (b'{"input": "http://testserver/samples/bad/not-an-image.png"}', "image_url_width_height_error"),
        (b'{"input": "http://testserver/samples/bad/wrong-type.png"}', "image_url_width_height_error"),
        (b'{"input": "http://testserver/samples/bad/no-length.png"}', "image_url_width_height_error"),
        (b'{"input": "http://testserver/samples/bad/truncated.jpg"}', "image_url_width_height_error"),
        (b'{"input": "http://testserver/samples/bad/too-big.png"}', "image_url_width_height_error"),
        (b'{"input": "http://testserver/samples/bad/missing.png"}', "image_url_width_height_error"),
        (b'{"input": "http://127.0.0.1:9/unreachable.png"}', "image_url_width_height_error"),
    ],
)
def test_upscale_bad_requests_charge_nothing(app_client: TestClient, body, code):
    response = app_client.post(UPSCALE, headers={**AUTH, "Content-Type": "application/json"}, content=body)
    assert (response.status_code, response.json()) == (400, {"error": code})
    books = ledger(app_client)
    assert (books["charged"], books["balance"]) == (0, 100)


def test_samples_1024_square_is_accepted_but_more_pixels_are_not(app_client: TestClient):
    ok = app_client.post(UPSCALE, headers=AUTH, json={"input": "http://testserver/samples/2048x512.png"})
    assert ok.status_code == 200
    too_many_pixels = {"input": "http://testserver/samples/1025x1024.png"}
    too_many = app_client.post(UPSCALE, headers=AUTH, json=too_many_pixels)
    assert too_many.json() == {"error": "image_url_width_height_error"}


def test_other_accounts_output_and_upload(app_client: TestClient):
    add_other_account(app_client)
    mine = app_client.get("/v1/image/generation/outputs", headers=AUTH).json()["outputs"][0]["id"]
    response = app_client.post(UPSCALE, headers=OTHER_AUTH, json={"input": mine})
    assert (response.status_code, response.json()) == (400, {"error": "output_not_found"})
    key = upload(app_client, imaging.sample_bytes(16, 16, "png")).json()["object"]
    response = app_client.post(UPSCALE, headers=OTHER_AUTH, json={"input": key})
    assert (response.status_code, response.json()) == (401, {"error": "image_not_owned"})


def test_oversized_upload_is_stored_but_not_upscalable(app_client: TestClient):
    key = upload(app_client, imaging.too_big_png()).json()["object"]
    response = app_client.post(UPSCALE, headers=AUTH, json={"input": key})
    assert response.json() == {"error": "image_url_width_height_error"}
    assert ledger(app_client)["charged"] == 0


@pytest.mark.parametrize(
    ("data", "code"),
    [(imaging.NOT_AN_IMAGE, "invalid_file"), (b"\0" * (10 * 1024 * 1024 + 1), "image_too_large")],
)
def test_upload_errors(app_client: TestClient, data, code):
    response = upload(app_client, data)
    assert (response.status_code, response.json()) == (400, {"error": code})


def test_upload_without_file_part(app_client: TestClient):
    response = app_client.post("/v1/image/upload", headers=AUTH, files={"other": ("a", b"x")})
    assert response.json() == {"error": "invalid_file"}
    assert app_client.post("/v1/image/upload", headers=AUTH, json={}).json() == {"error": "invalid_file"}


def test_insufficient_credits(app_client: TestClient):
    assert app_client.post("/_emulator/credits", json={"balance": 0}).json()["balance"] == 0
    response = app_client.post(UPSCALE, headers=AUTH, json={"input": SAMPLE})
    assert (response.status_code, response.json()) == (400, {"error": "insufficient_credits"})
    assert ledger(app_client)["charged"] == 0
    assert app_client.post("/_emulator/credits", json={"amount": 1}).json()["balance"] == 1
    assert app_client.post(UPSCALE, headers=AUTH, json={"input": SAMPLE}).json()["remaining_credits"] == 0


# -- rate limit ---------------------------------------------------------------------------------------


def test_rate_limit_is_plain_text_429(make_client):
    client = make_client(rate_limit=2)
    statuses = [client.post(UPSCALE, headers=AUTH, json={"input": SAMPLE}).status_code for _ in range(2)]
    assert statuses == [200, 200]
    limited = client.post(UPSCALE, headers=AUTH, json={"input": SAMPLE})
    assert limited.status_code == 429
    assert limited.text == "Too Many Requests" and limited.headers["content-type"].startswith("text/plain")
    assert limited.headers["retry-after"] == "1"
    assert limited.headers["x-ratelimit-limit"] == "2" and limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) > 0
    # reads get twice the budget in the same shared window: 2 more fit; health is not limited
    assert [client.get("/v1/image/upscale/models").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/v1/health").status_code == 200
    assert client.get("/samples/8x8.png").status_code == 200  # outside /v1: never limited
    books = ledger(client)
    assert books["rate_limited"] == 2 and books["charged"] == 2
    assert books["rate_limited_by_class"] == {"create": 1, "read": 1}
    assert books["requests_by_route"]["POST /v1/image/upscale/create"] == 3


def test_rate_limit_zero_disables(app_client: TestClient):
    assert {app_client.get("/v1/image/upscale/models").status_code for _ in range(60)} == {200}


def test_upload_has_its_own_window(make_client):
    client = make_client(rate_limit=10)  # uploads: 0.4 x 10 = 4 per second, own window
    png = client.get("/samples/16x16.png").content
    statuses = [
        client.post("/v1/image/upload", headers=AUTH, files={"file": ("a.png", png, "image/png")}).status_code
        for _ in range(5)
    ]
    assert statuses == [200] * 4 + [429]
    # creates and reads are counted apart from uploads
    assert client.get("/v1/image/upscale/models").status_code == 200
    assert ledger(client)["rate_limited_by_class"] == {"upload": 1}


def test_route_class_limits_are_configurable(make_client):
    client = make_client(rate_limit=1, read_rate_limit=3, upload_rate_limit=1)
    assert client.get("/_emulator/config").json()["read_rate_limit"] == 3
    assert [client.get("/v1/image/upscale/models").status_code for _ in range(4)] == [200, 200, 200, 429]
    patched = client.patch("/_emulator/config", json={"upload_rate_limit": 0, "latency_jitter": 0.2})
    assert patched.status_code == 200 and patched.json()["upload_rate_limit"] == 0
    assert patched.json()["latency_jitter"] == 0.2


# -- samples ----------------------------------------------------------------------------------------


def test_sample_routes(app_client: TestClient):
    response = app_client.get("/samples/256x192.png?seed=3")
    assert response.headers["content-type"] == "image/png"
    assert response.content == imaging.sample_bytes(256, 192, "png", 3)
    head = app_client.head("/samples/256x192.png?seed=3")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(response.content)
    assert app_client.get("/samples/10x10.webp").headers["content-type"] == "image/webp"
    assert app_client.get("/samples/10x10.jpg").headers["content-type"] == "image/jpeg"
    assert app_client.get("/samples/nonsense.png").status_code == 404
    assert app_client.get("/samples/bad/missing.png").status_code == 404
    assert app_client.get("/samples/bad/wrong-type.png").headers["content-type"].startswith("text/plain")
    assert "content-length" not in app_client.head("/samples/bad/no-length.png").headers


# -- admin ------------------------------------------------------------------------------------------------


def test_admin_accounts_config_reset(app_client: TestClient):
    account = add_other_account(app_client, plan_concurrency=2)
    assert account["api_keys"] == [OTHER_KEY] and account["plan_concurrency"] == 2
    assert len(account["outputs"]) == 8
    assert app_client.post("/_emulator/accounts", json={"api_key": OTHER_KEY}).status_code == 400
    topped_up = app_client.post("/_emulator/credits", json={"amount": 5, "api_key": OTHER_KEY})
    assert topped_up.json()["balance"] == 15
    assert app_client.post("/_emulator/credits", json={"amount": 1, "api_key": "sc-none"}).status_code == 404
    second_key = {"api_key": "sc-second", "same_account_as": OTHER_KEY}
    second = app_client.post("/_emulator/accounts", json=second_key)
    assert second.json()["balance"] == 15 and second.json()["api_keys"] == [OTHER_KEY, "sc-second"]
    config = app_client.patch("/_emulator/config", json={"latency": 0.01, "faults": {"slow": 0.5}}).json()
    assert config["latency"] == 0.01 and config["faults"] == {"slow": 0.5}
    assert app_client.patch("/_emulator/config", json={"latency": -1}).status_code == 400
    assert app_client.patch("/_emulator/config", json={"credits": 5}).status_code == 400
    assert app_client.patch("/_emulator/config", json={"faults": ""}).json()["faults"] == {}
    banned = app_client.patch(f"/_emulator/accounts/{OTHER_KEY}", json={"banned": True}).json()
    assert banned["banned"] is True
    app_client.post(UPSCALE, headers=AUTH, json={"input": SAMPLE})
    assert app_client.post("/_emulator/reset").json() == {"status": "reset", "balance": 100}
    books = ledger(app_client)
    assert books["charged"] == 0 and list(books["balances"]) == [KEY]
    assert state_of(app_client).config.latency == 0.01


def test_admin_is_loopback_only(make_app):
    with TestClient(make_app(), client=("10.1.2.3", 50000)) as remote:
        response = remote.get("/_emulator/ledger")
        assert (response.status_code, response.json()) == (403, {"error": "admin_loopback_only"})
        assert remote.get("/v1/health").status_code == 200


def test_worker_fails_sample_is_charged_and_refunded_each_time(app_client: TestClient):
    url = "http://testserver/samples/bad/worker-fails.png"
    assert app_client.head(url).status_code == 200
    for _ in range(2):
        response = app_client.post(UPSCALE, headers=AUTH, json={"input": url})
        assert (response.status_code, response.json()) == (500, {"error": "An unknown error has occured"})
    books = ledger(app_client)
    assert (books["charged"], books["refunded"], books["net_charged"], books["broken_inputs"]) == (2, 2, 0, 2)


def test_remaining_credits_is_the_balance_after_this_charge(make_client):
    client = make_client(latency=0.01)
    first = client.post(UPSCALE, headers=AUTH, json={"input": SAMPLE}).json()
    assert first["remaining_credits"] == 99
    client.post("/_emulator/credits", json={"amount": 5})
    second = client.post(UPSCALE, headers=AUTH, json={"input": SAMPLE}).json()
    assert second["remaining_credits"] == 103
