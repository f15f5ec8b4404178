"""Whatever the server answers, nothing is written outside the destination and the key stays home.

The API (or something impersonating it) answers hostile outputs through requests-mock: path
traversal in ``id`` and ``url``, non-http schemes, wrong or missing content types, oversize
bodies, broken JSON fields. Every case must end as a per-item failure with a code (or a safe
success), never as a crash of the batch, a file outside the destination or the API key sent to
an image host.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from airflow_provider_stablecog.exceptions import StablecogInputError
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.utils.storage import read_manifest
from tests.conftest import API_KEY, BASE_URL
from tests.reliability.support import destination_problems, make_context

CDN = "https://cdn.images.test"


def _jpeg(size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def api(stablecog_conn, requests_mock):
    """A fake API with one slot per input: ``answer(input_url, output_dict)``."""
    stablecog_conn(extra=json.dumps({"max_retries": 1, "rate_limit": 0}))
    requests_mock.get(f"{BASE_URL}/v1/credits", json={"total_remaining_credits": 100})
    answers: dict[str, dict] = {}

    def create(request, context):
        body = request.json()
        output = answers[body["input"]]
        if "__status__" in output:
            context.status_code = output["__status__"]
            return output["__body__"]
        return json.dumps(
            {"outputs": [output], "remaining_credits": 99, "settings": {"input": body["input"]}}
        )

    requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", text=create)

    class Api:
        mock = requests_mock

        def answer(self, input_url: str, output: dict) -> None:
            answers[input_url] = output

    return Api()


def _run(inputs, dest):
    from airflow_provider_stablecog.compat import AirflowException

    op = UpscaleOperator(
        task_id="hostile", inputs=inputs, destination=str(dest), max_failed_ratio=1.0, progress_interval=0
    )
    try:
        return op.execute(make_context())
    except AirflowException as exc:  # pragma: no cover - shown on failure
        pytest.fail(f"the batch did not finish: {exc}")


def _files_outside(root: Path, dest: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and dest not in p.parents]


HOSTILE_OUTPUTS = {
    "traversal in id": ({"id": "../../../../tmp/evil", "upscaled_image_url": f"{CDN}/ok.jpeg"}, "upscaled"),
    "traversal in url": (
        {"id": "o2", "upscaled_image_url": f"{CDN}/a/../../../../etc/evil.jpeg"},
        "upscaled",
    ),
    "encoded traversal in url": (
        {"id": "o3", "upscaled_image_url": f"{CDN}/%2e%2e/%2e%2e/evil.jpeg"},
        "upscaled",
    ),
    "absolute path as id": ({"id": "/etc/passwd", "upscaled_image_url": f"{CDN}/ok2.jpeg"}, "upscaled"),
    "newline and quote in id": (
        {"id": 'x"\n{"key": "forged"}', "upscaled_image_url": f"{CDN}/ok3.jpeg"},
        "upscaled",
    ),
    "file:// url": ({"id": "o4", "upscaled_image_url": "file:///etc/passwd"}, "invalid_output_url"),
    "ftp:// url": ({"id": "o5", "upscaled_image_url": "ftp://cdn.images.test/x.jpeg"}, "invalid_output_url"),
    "javascript: url": ({"id": "o6", "upscaled_image_url": "javascript:alert(1)"}, "invalid_output_url"),
    "relative url": ({"id": "o7", "upscaled_image_url": "../../etc/passwd"}, "invalid_output_url"),
    "html instead of an image": (
        {"id": "o8", "upscaled_image_url": f"{CDN}/page.jpeg"},
        "invalid_output_content",
    ),
    "image type, not an image": (
        {"id": "o9", "upscaled_image_url": f"{CDN}/fake.jpeg"},
        "invalid_output_image",
    ),
    "declared oversize": ({"id": "o10", "upscaled_image_url": f"{CDN}/huge.jpeg"}, "output_too_large"),
    "no url at all": ({"id": "o11"}, "invalid_output_url"),
    "url is not a string": (
        {"id": "o12", "upscaled_image_url": {"href": f"{CDN}/ok.jpeg"}},
        "invalid_output_url",
    ),
    "url on the API host": ({"id": "o13", "upscaled_image_url": f"{BASE_URL}/outputs/x.jpeg"}, "upscaled"),
}


def test_hostile_outputs_stay_inside_the_destination(api, tmp_path):
    api.mock.get(f"{CDN}/ok.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    api.mock.get(f"{CDN}/ok2.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    api.mock.get(f"{CDN}/ok3.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    api.mock.get(f"{CDN}/etc/evil.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    api.mock.get(
        f"{CDN}/a/../../../../etc/evil.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"}
    )
    api.mock.get(f"{CDN}/%2e%2e/%2e%2e/evil.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    api.mock.get(f"{CDN}/evil.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    api.mock.get(f"{CDN}/page.jpeg", text="<html>hi</html>", headers={"Content-Type": "text/html"})
    api.mock.get(f"{CDN}/fake.jpeg", text="<html>not an image</html>", headers={"Content-Type": "image/jpeg"})
    api.mock.get(
        f"{CDN}/huge.jpeg",
        content=b"x",
        headers={"Content-Type": "image/jpeg", "Content-Length": str(10**12)},
    )
    api.mock.get(f"{BASE_URL}/outputs/x.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    inputs = []
    for i, (output, _) in enumerate(HOSTILE_OUTPUTS.values()):
        url = f"https://img.test/{i}.png"
        api.answer(url, output)
        inputs.append(url)
    dest = tmp_path / "dest"

    records = _run(inputs, dest)

    got = {
        name: (r["status"] if r["status"] != "failed" else r["error"])
        for name, r in zip(HOSTILE_OUTPUTS, records, strict=True)
    }
    assert got == {name: expected for name, (_, expected) in HOSTILE_OUTPUTS.items()}
    assert _files_outside(tmp_path, dest) == []
    assert not Path("/tmp/evil").exists()
    assert destination_problems(dest) == []
    for r in records:
        if r.get("path"):
            assert Path(r["path"]).parent == dest and Path(r["path"]).name.endswith(".jpg")
    manifest = read_manifest(dest)
    assert len(manifest) == len(inputs) and "forged" not in manifest
    downloads = [r for r in api.mock.request_history if r.method == "GET" and "/v1/" not in r.path]
    assert downloads and all("Authorization" not in r.headers for r in downloads)
    assert all(API_KEY not in json.dumps(dict(r.headers)) for r in downloads)
    api_calls = [r for r in api.mock.request_history if r.path.startswith("/v1/") and r.method == "POST"]
    assert api_calls and all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in api_calls)


def test_download_cap_holds_without_content_length(client, requests_mock, tmp_path):
    """A body larger than the cap is cut off even when no Content-Length announces it."""
    requests_mock.get(
        f"{CDN}/stream.jpeg", body=io.BytesIO(b"\xff" * 5000), headers={"Content-Type": "image/jpeg"}
    )
    target = tmp_path / "out.bin"
    with pytest.raises(StablecogInputError) as info:
        client.download(f"{CDN}/stream.jpeg", lambda: target.open("wb"), max_bytes=1000, chunk_size=256)
    assert info.value.code == "output_too_large"
    assert target.stat().st_size <= 1000


def test_redirects_never_carry_the_key(client, requests_mock, tmp_path):
    requests_mock.get(
        f"{CDN}/moved.jpeg", status_code=302, headers={"Location": "https://elsewhere.test/x.jpeg"}
    )
    requests_mock.get(
        "https://elsewhere.test/x.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"}
    )
    target = tmp_path / "x.jpg"
    client.download(f"{CDN}/moved.jpeg", lambda: target.open("wb"))
    assert all("Authorization" not in r.headers for r in requests_mock.request_history)


def test_api_redirect_to_another_host_drops_the_key(client, requests_mock):
    requests_mock.get(
        f"{BASE_URL}/v1/credits", status_code=307, headers={"Location": "https://attacker.test/v1/credits"}
    )
    requests_mock.get("https://attacker.test/v1/credits", json={"total_remaining_credits": 1})
    client.get_credits()
    hop = requests_mock.request_history[-1]
    assert hop.netloc == "attacker.test" and "Authorization" not in hop.headers


@pytest.mark.parametrize(
    "body",
    [
        {"outputs": [], "remaining_credits": 1},
        {"outputs": [{"url": f"{CDN}/x.jpeg"}], "remaining_credits": 1},
        {"outputs": [{"id": "o", "upscaled_image_url": f"{CDN}/ok.jpeg"}], "remaining_credits": "lots"},
        {"outputs": "nope"},
        ["not", "an", "object"],
    ],
    ids=["no outputs", "output without id", "credits not a number", "outputs not a list", "not an object"],
)
def test_malformed_answers_fail_the_item_not_the_batch(api, tmp_path, body):
    api.mock.get(f"{CDN}/ok.jpeg", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    api.answer("https://img.test/bad.png", {"__status__": 200, "__body__": json.dumps(body)})
    api.answer("https://img.test/good.png", {"id": "g", "upscaled_image_url": f"{CDN}/ok.jpeg"})
    records = _run(["https://img.test/bad.png", "https://img.test/good.png"], tmp_path / "d")
    assert records[1]["status"] == "upscaled"
    assert records[0]["status"] == "failed" and records[0]["error"], records[0]
    assert os.listdir(tmp_path) == ["d"]
