"""A bounded load test of `vlforget serve` on loopback: N concurrent chats while a request applies.

Starts a real server process (built-in model, SQLite, CORE), submits one deletion
request, and while the worker applies it fires `--chats` chat requests from
`--concurrency` client threads. Reports p50/p99 latency, the state versions that
answered, and checks every answer: it names one state version and equals the answer
that state gives to the same query (each version's state is reloaded from its folder
and asked again). Prints JSON; `--markdown` prints the table of results/service.md.

    python benchmarks/service_load.py --chats 200 --concurrency 8 --markdown
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FAST_CORE = {"steps": 20, "router_steps": 20, "modulator_steps": 100}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m vlforget serve` in its own process on a free loopback port."""

    def __init__(self, data_dir: Path, method: str = "core", overrides: dict | None = None,
                 database_url: str | None = None, threads: int = 1):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = self.data_dir.parent / f"{self.data_dir.name}-method.json"
        self.config.write_text(json.dumps(overrides if overrides is not None else FAST_CORE))
        self.method, self.database_url, self.threads = method, database_url, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def _args(self, *extra: str) -> list[str]:
        args = [sys.executable, "-m", "vlforget", "serve", "--data-dir", str(self.data_dir), "--method", self.method,
                "--config", str(self.config), *extra]
        return args + (["--database-url", self.database_url] if self.database_url else [])

    def env(self) -> dict:
        src = str(ROOT / "src")
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads),
                "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def create_token(self, name: str) -> str:
        out = subprocess.run(self._args("--create-token", name), capture_output=True, text=True, check=True,
                             env=self.env())
        return out.stdout.strip()

    def start(self, timeout: float = 180) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(self._args("--port", str(self.port)), stdout=log, stderr=log,
                                            env=self.env())
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).json()["status"] == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not healthy after {timeout}s: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        """SIGKILL: no shutdown handler, no flush; whatever was committed is all there is."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill9()


def png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def queries(n: int) -> list[tuple[object, str]]:
    """`n` chat queries over a small fixed set of built-in scenes (so answers repeat and compare)."""
    from vlforget.data.benchmark import general_samples

    pool = general_samples(24, "service-load", "test")
    return [(pool[i % len(pool)].image, pool[i % len(pool)].instruction) for i in range(n)]


def chat_load(url: str, token: str, items: list[tuple[object, str]], concurrency: int) -> list[dict]:
    """Every query once, `concurrency` at a time; each result: latency, answer, state version."""
    encoded = [(png_b64(image), instruction) for image, instruction in items]
    local = threading.local()

    def one(index: int) -> dict:
        if not hasattr(local, "client"):
            local.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=300)
        image, instruction = encoded[index]
        start = time.perf_counter()
        response = local.client.post(url + "/v1/chat", json={"image": image, "instruction": instruction})
        latency = time.perf_counter() - start
        response.raise_for_status()
        body = response.json()
        return {"index": index, "latency": latency, "answer": body["answer"], "state_version": body["state_version"],
                "finished": time.time()}

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(len(items))))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[rank]


def check_answers(data_dir: Path, method: str, overrides: dict, items, results: list[dict]) -> dict:
    """Reload each answering version's state and ask it every query it answered; count mismatches."""
    import vlforget
    from vlforget.serving.states import folder_name

    mismatches = []
    for version in sorted({r["state_version"] for r in results}):
        state = vlforget.load_method(method, vlforget.load_backbone(), data_dir / "states" / folder_name(version),
                                     overrides)
        mine = [r for r in results if r["state_version"] == version]
        for r in mine:  # one query at a time, as the server answered it
            again = state.generate([items[r["index"]][0]], [items[r["index"]][1]])[0]
            if again != r["answer"]:
                mismatches.append({"index": r["index"], "version": version, "served": r["answer"], "again": again})
    return {"mismatches": mismatches, "checked": len(results)}


def request_body() -> dict:
    from vlforget.data.scenes import Scene, SceneObject, render

    def picture(cell, background):
        return render(Scene((SceneObject("star", "red", "large", "solid", cell),), background))

    return {"name": "red star colour", "refusals": ["sorry, i cannot discuss the colour of the star."],
            "forget": [{"image": png_b64(picture(4, "black")), "instruction": "what colour is the star?",
                        "answer": "red"},
                       {"image": png_b64(picture(0, "gray")), "instruction": "what colour is the star?",
                        "answer": "red"}],
            "visual_concepts": ["a red star"], "textual_concepts": ["asking the colour of an object"]}


def run(server: ServerProcess, token: str, chats: int, concurrency: int, apply: bool = True) -> dict:
    """Submit a request (unless `apply` is False: the idle baseline), load the server with
    chats while it applies, check every answer."""
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    before = client.get("/health").json()["state_version"]
    rid = client.post("/v1/deletion-requests", json=request_body()).json()["id"] if apply else None
    while rid and client.get(f"/v1/deletion-requests/{rid}").json()["status"] == "queued":
        time.sleep(0.05)
    items = queries(chats)
    started = time.time()
    results = chat_load(server.url, token, items, concurrency)
    wall = time.time() - started
    request = client.get(f"/v1/deletion-requests/{rid}").json() if rid else {"status": None}
    events = client.get("/v1/ledger").json()["events"]
    applied_at = next((e["at"] for e in events if e["kind"] == "request_applied" and e["request_id"] == rid), None)
    latencies = [r["latency"] for r in results]
    check = check_answers(server.data_dir, server.method, json.loads(server.config.read_text()), items, results)
    versions = sorted({r["state_version"] for r in results})
    return {
        "chats": chats, "concurrency": concurrency, "wall_seconds": round(wall, 2),
        "p50_ms": round(1000 * percentile(latencies, 50), 1), "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "max_ms": round(1000 * max(latencies), 1), "throughput_per_s": round(chats / wall, 2),
        "state_before": before, "versions_answering": versions,
        "answers_per_version": {str(v): sum(r["state_version"] == v for r in results) for v in versions},
        "latency_by_version": {str(v): {"p50_ms": round(1000 * percentile(ms, 50), 1),
                                        "p99_ms": round(1000 * percentile(ms, 99), 1)}
                               for v in versions
                               for ms in [[r["latency"] for r in results if r["state_version"] == v]]},
        "request_status_after": request["status"], "request_applied_at": applied_at,
        "mismatches": check["mismatches"], "checked": check["checked"], "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    parser.add_argument("--idle", action="store_true", help="baseline: no deletion request applies meanwhile")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", threads=args.threads)
        token = server.create_token("load")
        server.start()
        try:
            report = run(server, token, args.chats, args.concurrency, apply=not args.idle)
        finally:
            server.stop()
    report.pop("results")
    if args.markdown:
        print("| while | chats | concurrency | p50 ms | p99 ms | max ms | chats/s | versions answering (answers) "
              "| answers re-checked | mismatches |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        spread = ", ".join(f"v{v}: {n}" for v, n in report["answers_per_version"].items())
        print(f"| {'idle' if args.idle else 'a request applies'} | {report['chats']} | {report['concurrency']} | {report['p50_ms']} | {report['p99_ms']} | "
              f"{report['max_ms']} | {report['throughput_per_s']} | {spread} | {report['checked']} | "
              f"{len(report['mismatches'])} |")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
