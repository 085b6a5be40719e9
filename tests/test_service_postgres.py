"""The ledger on a real PostgreSQL server: a throw-away cluster from Debian's package
(`initdb` + `pg_ctl`, loopback only), skipped with a message when it is not installed."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra: pip install -e '.[serve]'")
pytest.importorskip("psycopg", reason="PostgreSQL needs psycopg (the 'serve' extra)")
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402

from service_helpers import FAST_CORE, REFUSAL, b64, free_port, picture, star_request, wait_for  # noqa: E402
from vlforget.serving.app import create_app  # noqa: E402
from vlforget.serving.settings import ServiceSettings  # noqa: E402
from vlforget.serving.tokens import create_token  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def postgres_bin() -> str | None:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


@pytest.fixture(scope="module")
def postgres_url():
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql); PostgreSQL tests skipped")
    # not under pytest's tmp folders: those are private to this user, and the server may run as `postgres`
    root = Path(tempfile.mkdtemp(prefix="vlforget-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    # initdb refuses to run as root: run the server as Debian's `postgres` user then
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "vlforget", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-w", "-l", str(root / "server.log"), "-o",
                    f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://vlforget@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_service_on_postgres(postgres_url, tmp_path):
    settings = ServiceSettings(data_dir=tmp_path / "data", database_url=postgres_url, method="core",
                               method_overrides=FAST_CORE, utility_pairs=20)
    token = create_token(settings, "alice")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        rid = client.post("/v1/deletion-requests", json=star_request()).json()["id"]
        done = wait_for(lambda: client.get(f"/v1/deletion-requests/{rid}").json(), ("verified", "failed"))
        assert done["status"] == "verified", done["error"]
        chat = client.post("/v1/chat", json={"image": b64(picture()), "instruction": "what colour is the star?"})
        assert chat.json() == {"answer": REFUSAL, "state_version": done["state_version"]}
        kinds = [e["kind"] for e in client.get("/v1/ledger").json()["events"]]
        assert kinds == ["token_created", "state_created", "service_started", "request_submitted",
                         "request_applying", "request_applied", "request_verified"]
    engine = create_engine(postgres_url)
    with engine.connect() as db:
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
        assert db.execute(text("SELECT token_hash FROM tokens")).scalar() != token
        for statement in ("UPDATE events SET kind = 'forged'", "DELETE FROM events"):
            with pytest.raises(DBAPIError, match="append-only"):
                with db.begin_nested():
                    db.execute(text(statement))
    engine.dispose()
    # a second start on the same database migrates nothing and loses nothing
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        assert client.get(f"/v1/deletion-requests/{rid}").json()["status"] == "verified"
        assert client.get("/health").json()["state_version"] == done["state_version"]
