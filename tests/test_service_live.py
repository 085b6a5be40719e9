"""The service as a real process: kill -9 mid-request and restart, the status page in
headless Chromium, and a bounded chat load while a request applies (loopback only)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra: pip install -e '.[serve]'")
import httpx  # noqa: E402

from browser import FLAGS, chromium  # noqa: E402
from service_helpers import star_request, wait_for  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import service_load  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = service_load.ServerProcess(tmp_path_factory.mktemp("live") / "data")
    token = live.create_token("ops")
    live.start()
    client = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    yield live, token, client
    client.close()
    live.stop()


def status_of(client, rid):
    return lambda: client.get(f"/v1/deletion-requests/{rid}").json()


def test_kill9_mid_request_then_restart(server):
    live, _, client = server
    first = client.post("/v1/deletion-requests", json=star_request("stars", "star")).json()["id"]
    second = client.post("/v1/deletion-requests", json=star_request("crosses", "cross")).json()["id"]
    wait_for(status_of(client, first), ("applying",), timeout=60)
    time.sleep(1.0)  # inside the method's training, well before the state is recorded
    live.kill9()
    # what a submission killed before its row committed leaves behind (its client got no id)
    orphan = live.data_dir / "uploads" / ("f" * 32)
    orphan.mkdir()
    (orphan / "forget-000.png").write_bytes(b"half")
    live.start()
    assert not orphan.exists()
    for rid in (first, second):
        done = wait_for(status_of(client, rid), ("verified", "failed"))
        assert done["status"] == "verified", done["error"]
    events = client.get("/v1/ledger").json()["events"]
    applied = [e for e in events if e["kind"] == "request_applied"]
    # every accepted request applied exactly once, in submission order, onto a state without it
    assert [e["request_id"] for e in applied] == [first, second]
    assert applied[-1]["detail"]["applied"] == [first, second]
    assert [e["request_id"] for e in events if e["kind"] == "request_requeued"] == [first]
    assert [e["kind"] for e in events].count("service_started") == 2
    recorded = {e["state_version"] for e in events if e["kind"] in ("request_applied", "state_created")}
    on_disk = {int(p.name[1:]) for p in (live.data_dir / "states").iterdir()}
    assert on_disk == recorded  # no half-written or unrecorded state left behind


def test_kill9_between_applied_and_verified(server):
    live, _, client = server
    rid = client.post("/v1/deletion-requests", json=star_request("circles", "circle")).json()["id"]
    reached = wait_for(status_of(client, rid), ("applied", "verified"), timeout=120)
    live.kill9()
    live.start()
    done = wait_for(status_of(client, rid), ("verified", "failed"))
    assert done["status"] == "verified" and done["state_version"] == reached["state_version"]
    kinds = [e["kind"] for e in client.get("/v1/ledger").json()["events"] if e["request_id"] == rid]
    assert kinds.count("request_applied") == 1 and kinds.count("request_applying") == 1


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_status_page_in_chromium(server, tmp_path):
    import subprocess

    live, token, client = server
    url = live.url.replace("http://", f"http://ops:{token}@") + "/status"
    run = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--v=0", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    requests = client.get("/v1/deletion-requests").json()["requests"]
    assert 'id="requests"' in dom and 'id="ledger"' in dom
    for request in requests:  # every request is a row with its status and CRR
        row = dom.split(f'data-id="{request["id"]}"', 1)[1].split("</tr>", 1)[0]
        assert f'class="status-{request["status"]}"' in row
        assert f'{request["verification"]["crr"]:.1f}' in row
    health = client.get("/health").json()
    assert f'<b id="served-version">{health["state_version"]}</b>' in dom
    assert dom.count("request_applied") == sum(r["state_version"] is not None for r in requests)
    errors = [line for line in run.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    assert not errors
    # without the token the browser gets a Basic-auth challenge (nothing to show headless), not the page
    bare = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom",
                           live.url + "/status"], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 0 and 'id="ledger"' not in bare.stdout and "request_applied" not in bare.stdout


def test_chat_load_while_a_request_applies(server):
    live, token, _ = server
    report = service_load.run(live, token, chats=24, concurrency=4)
    assert report["checked"] == 24 and report["mismatches"] == []
    assert all(r["state_version"] in report["versions_answering"] for r in report["results"])
    assert report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["versions_answering"][0] >= report["state_before"]


@pytest.mark.slow
def test_kill9_at_random_moments_while_clients_submit(server):
    """Three kills at random moments while a client keeps submitting: every request that got
    its 202 is applied exactly once, in submission order, and nothing else is."""
    import random
    import threading

    live, _, client = server
    rng = random.Random(7)
    accepted: list[str] = []
    stop = threading.Event()

    def submit_forever():
        names = iter(range(10_000))
        while not stop.is_set():
            try:
                response = client.post("/v1/deletion-requests", json=star_request(f"r{next(names)}", "diamond"))
            except httpx.HTTPError:
                time.sleep(0.2)  # the server is down; a request without its 202 was not accepted
                continue
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            time.sleep(rng.uniform(1.0, 4.0))

    submitter = threading.Thread(target=submit_forever, daemon=True)
    submitter.start()
    for _ in range(3):
        time.sleep(rng.uniform(2.0, 15.0))
        live.kill9()
        live.start()
    stop.set()
    submitter.join(60)
    for rid in accepted:
        assert wait_for(status_of(client, rid), ("verified", "failed"), timeout=600)["status"] == "verified"
    events = client.get("/v1/ledger", params={"limit": 10000}).json()["events"]
    applied = [e["request_id"] for e in events if e["kind"] == "request_applied" and e["request_id"] in accepted]
    assert applied == accepted  # each once, in the order their 202s came back
    served = [e for e in events if e["kind"] == "request_applied"][-1]["detail"]["applied"]
    assert all(served.count(rid) == 1 for rid in accepted)
    final = client.get("/v1/deletion-requests").json()["requests"]
    assert {r["id"] for r in final} >= set(accepted)
