"""The service in-process (FastAPI TestClient, SQLite ledger, the real worker thread, CORE)."""

from __future__ import annotations

import io
import sqlite3

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from service_helpers import FAST_CORE, REFUSAL, b64, picture, png, star_request, wait_for  # noqa: E402
from vlforget.cli import app as cli  # noqa: E402
from vlforget.serving.app import create_app  # noqa: E402
from vlforget.serving.settings import ServiceSettings  # noqa: E402
from vlforget.serving.tokens import create_token  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("service")
    settings = ServiceSettings(data_dir=data, method="core", method_overrides=FAST_CORE, utility_pairs=20,
                               max_body_bytes=1_000_000, max_image_bytes=200_000, max_image_side=256)
    token = create_token(settings, "alice")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client, token, settings


def view(client, request_id):
    return lambda: client.get(f"/v1/deletion-requests/{request_id}").json()


def events_of(client, request_id):
    return [e["kind"] for e in client.get("/v1/ledger").json()["events"] if e["request_id"] == request_id]


# -- auth --------------------------------------------------------------------------------------------
def test_every_route_but_health_needs_a_token(service):
    client, token, _ = service
    anonymous = TestClient(client.app)
    assert anonymous.get("/health").status_code == 200
    for method, path in [("get", "/v1/deletion-requests"), ("get", "/v1/deletion-requests/x"), ("get", "/v1/ledger"),
                         ("post", "/v1/deletion-requests"), ("post", "/v1/chat"), ("get", "/status"),
                         ("post", "/v1/deletion-requests/x/revert")]:
        response = getattr(anonymous, method)(path)
        assert response.status_code == 401, path
        assert "API token" in response.json()["error"]
    assert anonymous.get("/v1/ledger", headers={"Authorization": "Bearer vlf_wrong"}).status_code == 401
    assert anonymous.get("/v1/ledger", auth=("anyone", token)).status_code == 200  # Basic: token as password


def test_tokens_are_hashed_at_rest(service):
    _, token, settings = service
    with sqlite3.connect(settings.data_dir / "ledger.sqlite3") as db:
        stored = [row[0] for row in db.execute("SELECT token_hash FROM tokens")]
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64
    assert token.encode() not in (settings.data_dir / "ledger.sqlite3").read_bytes()


# -- requests in, applied in order, verified --------------------------------------------------------------
def test_request_is_applied_verified_and_answered(service):
    client, _, _ = service
    response = client.post("/v1/deletion-requests", json=star_request())
    assert response.status_code == 202 and response.json()["status"] == "queued"
    rid = response.json()["id"]
    done = wait_for(view(client, rid), ("verified", "failed"))
    assert done["status"] == "verified", done["error"]
    assert done["state_version"] >= 1
    numbers = done["verification"]
    assert 0 <= numbers["crr"] <= 100 and 0 <= numbers["ar"] <= 100 and numbers["s"] is not None
    assert events_of(client, rid) == ["request_submitted", "request_applying", "request_applied", "request_verified"]
    chat = client.post("/v1/chat", json={"image": b64(picture()), "instruction": "what colour is the star?"}).json()
    assert chat["state_version"] == done["state_version"]
    assert chat["answer"] == REFUSAL  # the forget example itself is refused under the new state
    listed = client.get("/v1/deletion-requests").json()["requests"]
    assert rid in [r["id"] for r in listed]


def test_multipart_request_in_order_with_generated_file_names(service):
    client, _, settings = service
    before = client.get("/health").json()["state_version"]
    files = [("forget_image", ("../../evil name.png", png(picture("cross")), "image/png")),
             ("forget_image", ("/etc/passwd", png(picture("cross", cell=0)), "image/png")),
             ("retain_image", ("r.png", png(picture("circle", "blue")), "image/png"))]
    data = {"name": "<script>alert('x')</script> crosses", "refusal": "sorry, i cannot discuss crosses.",
            "forget_instruction": "what colour is the cross?", "retain_instruction": "what colour is the circle?",
            "retain_answer": "blue", "visual_concept": "a red cross"}
    response = client.post("/v1/deletion-requests", files=files, data=data)
    assert response.status_code == 202, response.text
    rid = response.json()["id"]
    assert response.json()["forget_examples"] == 2 and response.json()["retain_examples"] == 1
    done = wait_for(view(client, rid), ("verified", "failed"))
    assert done["status"] == "verified", done["error"]
    assert done["state_version"] == before + 1
    stored = sorted(p.name for p in (settings.data_dir / "uploads" / rid).iterdir())
    assert stored == ["forget-000.png", "forget-001.png", "retain-000.png"]
    # the state that applied it holds every earlier applied request first, then this one
    applied = [e for e in client.get("/v1/ledger").json()["events"] if e["kind"] == "request_applied"]
    assert applied[-1]["request_id"] == rid and applied[-1]["detail"]["applied"][-1] == rid
    assert applied[-1]["detail"]["applied"][:-1] == applied[-2]["detail"]["applied"]
    page = client.get("/status")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; crosses" in page.text
    assert "<script>" not in page.text


def test_revert_rebuild_then_drop(service):
    client, _, settings = service
    first, second = [r["id"] for r in client.get("/v1/deletion-requests").json()["requests"]
                     if r["status"] == "verified"][:2]
    cross = {"image": b64(picture("cross")), "instruction": "what colour is the cross?"}
    # 1. rebuilt (every method can): the state before `first`, then `second` applied again
    settings.drop_reverts = False
    response = client.post(f"/v1/deletion-requests/{first}/revert")
    assert response.status_code == 202 and response.json()["revert_requested"]
    done = wait_for(view(client, first), ("reverted",))
    reverted = [e for e in client.get("/v1/ledger").json()["events"] if e["kind"] == "request_reverted"][-1]
    assert reverted["request_id"] == first and reverted["detail"] == {"applied": [second], "how": "rebuilt"}
    assert client.get("/health").json()["state_version"] == reverted["state_version"] == done["state_version"] + 2
    chat = client.post("/v1/chat", json={"image": b64(picture()), "instruction": "what colour is the star?"}).json()
    assert chat["state_version"] == reverted["state_version"] and chat["answer"] != REFUSAL
    assert client.post(f"/v1/deletion-requests/{first}/revert").status_code == 409
    assert client.post("/v1/deletion-requests/nope/revert").status_code == 404
    # 2. dropped (CORE): nothing of `second` is left, so the original model answers
    settings.drop_reverts = True
    client.post(f"/v1/deletion-requests/{second}/revert")
    wait_for(view(client, second), ("reverted",))
    dropped = [e for e in client.get("/v1/ledger").json()["events"] if e["kind"] == "request_reverted"][-1]
    assert dropped["detail"] == {"applied": [], "how": "dropped"}
    import vlforget

    original = vlforget.load_backbone().generate([picture("cross")], [cross["instruction"]])[0]
    assert client.post("/v1/chat", json=cross).json() == {"answer": original,
                                                           "state_version": dropped["state_version"]}


def test_drop_request_renumbers_the_later_requests(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    from vlforget.serving.revert import drop_request

    tensors = {"pool.0.weight": torch.zeros(2)}
    for i in range(3):
        for key in ("head", "row", "load", "proto_features", "proto_instructions"):
            tensors[f"{key}.{i}"] = torch.full((2,), float(i))
        tensors[f"concept.{i}.wv"] = torch.full((2,), float(i))
    save_file(tensors, str(tmp_path / "state.safetensors"))
    state = {"concepts": [{"name": n} for n in "abc"], "info": [{"n": n} for n in "abc"]}
    (tmp_path / "method.json").write_text(json.dumps({"method": "core", "applied": list("abc"), "state": state}))
    meta, kept = drop_request(tmp_path, "b")
    assert meta["applied"] == ["a", "c"] and [c["name"] for c in meta["state"]["concepts"]] == ["a", "c"]
    assert meta["state"]["info"] == [{"n": "a"}, {"n": "c"}]
    assert sorted(kept) == sorted(["pool.0.weight", "concept.0.wv", "concept.1.wv"] + [
        f"{k}.{i}" for k in ("head", "row", "load", "proto_features", "proto_instructions") for i in (0, 1)])
    assert kept["head.1"][0] == 2.0 and kept["concept.1.wv"][0] == 2.0 and kept["row.0"][0] == 0.0
    (tmp_path / "method.json").write_text(json.dumps({"method": "idknll", "applied": ["a"], "state": {}}))
    with pytest.raises(ValueError, match="cannot drop a request; rebuild it instead"):
        drop_request(tmp_path, "a")


# -- bad input: one clear error each -------------------------------------------------------------------------
def big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("change, status, message", [
    (lambda b: b.update(refusals=[]), 400, "refusals: give at least one refusal sentence"),
    (lambda b: b.pop("refusals"), 422, "refusals: Field required"),
    (lambda b: b.update(colour="red"), 422, "colour: Extra inputs are not permitted"),
    (lambda b: b.update(forget=[]), 400, "at least one forget example"),
    (lambda b: b["forget"][0].update(image="not base64!"), 400, "forget[0]: image is not valid base64"),
    (lambda b: b["forget"][1].update(image="aGVsbG8="), 400, "forget[1]: not an image Pillow can read"),
    (lambda b: b["retain"][0].update(image=__import__("base64").b64encode(big_png(300)).decode()), 413,
     "retain[0]: image is 300x8, the limit is 256 pixels a side"),
    (lambda b: b.update(name=""), 400, "name must not be empty"),
    (lambda b: b["retain"][0].update(instruction=" "), 400, "retain[0].instruction must not be empty"),
    (lambda b: b.update(description="x" * 2001), 413, "description is 2001 characters, the limit is 2000"),
    (lambda b: b.update(forget=b["forget"] * 40), 413, "examples given, the limit is 64"),
])
def test_bad_json_request_is_named(service, change, status, message):
    client, _, settings = service
    body = star_request()
    change(body)
    response = client.post("/v1/deletion-requests", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    # a refused request leaves no files behind
    accepted = {r["id"] for r in client.get("/v1/deletion-requests").json()["requests"]}
    assert {p.name for p in (settings.data_dir / "uploads").iterdir()} <= accepted


def test_oversized_body_and_bad_multipart_are_refused(service):
    client, _, _ = service
    response = client.post("/v1/deletion-requests", content=b"x" * 1_000_001,
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit of 1000000 bytes" in response.json()["error"]
    # chunked, no Content-Length: counted as it arrives
    response = client.post("/v1/deletion-requests", content=iter([b"x" * 600_000, b"x" * 600_000]),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit of 1000000 bytes" in response.json()["error"]
    response = client.post("/v1/deletion-requests", files=[("forget_image", ("a.png", png(picture()), "image/png"))] * 2,
                           data={"name": "x", "refusal": "no.", "forget_instruction": ["a?", "b?", "c?"]})
    assert response.status_code == 400 and "2 image(s) but 3 instruction(s)" in response.json()["error"]
    response = client.post("/v1/deletion-requests", files=[("forget_image", ("a.png", png(picture()), "image/png"))],
                           data={"name": "x", "refusal": "no.", "forget_instruction": "a?", "path": "/etc"})
    assert response.status_code == 400 and "unknown form field(s) ['path']" in response.json()["error"]
    response = client.post("/v1/chat", content=b"hello", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    response = client.post("/v1/chat", json={"image": b64(picture()), "instruction": "  "})
    assert response.status_code == 400 and "instruction must not be empty" in response.json()["error"]
    assert client.get("/v1/deletion-requests/unknown").status_code == 404


def test_ledger_is_append_only_in_the_database(service):
    _, _, settings = service
    with sqlite3.connect(settings.data_dir / "ledger.sqlite3") as db:
        for statement in ("UPDATE events SET kind = 'forged'", "DELETE FROM events"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)


# -- the command ---------------------------------------------------------------------------------------------
def test_cli_create_token_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "--data-dir", str(tmp_path), "--create-token", "bob"])
    assert result.exit_code == 0 and result.stdout.strip().startswith("vlf_")
    settings = ServiceSettings(data_dir=tmp_path)
    with sqlite3.connect(settings.data_dir / "ledger.sqlite3") as db:
        assert [r[0] for r in db.execute("SELECT name FROM tokens")] == ["bob"]
        assert [r[0] for r in db.execute("SELECT kind FROM events")] == ["token_created"]
    result = runner.invoke(cli, ["serve", "--data-dir", str(tmp_path), "--method", "coer"])
    assert result.exit_code == 2 and "unknown method 'coer'" in result.stderr and "core" in result.stderr
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    result = runner.invoke(cli, ["serve", "--data-dir", str(tmp_path), "--config", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "stepz" in result.stderr and "steps" in result.stderr
    result = runner.invoke(cli, ["serve", "--data-dir", str(tmp_path), "--database-url", "not a url"])
    assert result.exit_code == 2 and "--database-url" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
