"""The FastAPI application: routes only; the work is in `ledger`, `uploads` and `worker`.

Every route except `/health` needs an API token. Client mistakes get one JSON error,
`{"error": "..."}`, with a 4xx status naming the problem.
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from datetime import timezone
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from vlforget.serving import status_page
from vlforget.serving.auth import hash_token, token_from_header
from vlforget.serving.db import make_engine, migrate, sessions
from vlforget.serving.ledger import APPLIED, VERIFIED, Ledger
from vlforget.serving.settings import ServiceSettings
from vlforget.serving.uploads import BadInput, check_image, check_text, decode_base64, store_request
from vlforget.serving.worker import Worker


# -- JSON bodies ---------------------------------------------------------------------------------
class ExampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="the image, base64 (PNG or JPEG), optionally as a data: URL")
    instruction: str
    answer: str = ""


class DeletionRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    refusals: list[str]
    forget: list[ExampleIn]
    retain: list[ExampleIn] = []
    visual_concepts: list[str] = []
    textual_concepts: list[str] = []


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str
    instruction: str


# -- the body-size limit, before anything is parsed ------------------------------------------------------
class BodyLimit:
    """Refuse bodies over `limit` bytes with 413: by Content-Length up front, and by counting
    what arrives (a chunked upload has no Content-Length)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BadInput(f"request body over the limit of {self.limit} bytes", 413)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse({"error": f"request body over the limit of {self.limit} bytes"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


# -- views of rows ----------------------------------------------------------------------------------------
def iso(moment) -> str:
    """UTC ISO time; SQLite hands back naive datetimes for what was stored as UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def request_view(row) -> dict[str, Any]:
    return {
        "id": row.id, "seq": row.seq, "name": row.name, "status": row.status,
        "description": row.payload.get("description", ""),
        "forget_examples": len(row.payload["forget"]), "retain_examples": len(row.payload["retain"]),
        "submitted_by": row.submitted_by, "submitted_at": iso(row.submitted_at),
        "state_version": row.state_version, "revert_requested": row.revert_requested,
        "verification": {"crr": row.crr, "ar": row.ar, "s": row.s}, "error": row.error,
    }


def event_view(event) -> dict[str, Any]:
    return {"id": event.id, "at": iso(event.at), "kind": event.kind, "request_id": event.request_id,
            "state_version": event.state_version, "actor": event.actor, "detail": event.detail}


# -- the application -----------------------------------------------------------------------------------------
def create_app(settings: ServiceSettings, start_worker: bool = True) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.url)
    engine = make_engine(settings.url)
    ledger = Ledger(sessions(engine))
    worker = Worker(settings, ledger)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_worker:
            await run_in_threadpool(worker.start)
        yield
        worker.stop()
        engine.dispose()

    app = FastAPI(title="vlforget", lifespan=lifespan,
                  description="Deletion requests in, an audited vision-language model out.")
    app.state.ledger, app.state.worker, app.state.settings = ledger, worker, settings
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(BadInput)
    async def bad_input(_request, error: BadInput):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, error: StarletteHTTPException):
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error: ValidationError | RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return JSONResponse({"error": f"{where or 'body'}: {first['msg']}"}, status_code=422)

    def actor(request: Request) -> str:
        token = token_from_header(request.headers.get("authorization"))
        name = ledger.token_name(hash_token(token)) if token else None
        if name is None:
            # a Basic challenge: a browser then sends the token given as the URL's password
            raise HTTPException(401, "a valid API token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": 'Basic realm="vlforget"'})
        return name

    def served():
        if worker.served is None:
            raise HTTPException(503, "the model is still loading")
        return worker.served

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok" if worker.served else "starting",
                "state_version": worker.served.version if worker.served else None}

    @app.post("/v1/deletion-requests", status_code=202)
    async def submit(request: Request, who: str = Depends(actor)) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            fields, forget, retain = await _from_form(request, settings)
        elif content_type.startswith("application/json"):
            body = DeletionRequestIn.model_validate_json(await request.body())
            fields = body.model_dump(exclude={"forget", "retain"})
            forget, retain = ([(check_image(decode_base64(e.image, f"{split}[{i}]"), settings, f"{split}[{i}]"),
                                e.instruction, e.answer) for i, e in enumerate(examples)]
                              for split, examples in (("forget", body.forget), ("retain", body.retain)))
        else:
            raise BadInput("send application/json or multipart/form-data", 415)
        name = check_text(fields.get("name"), settings, "name")
        request_id = uuid.uuid4().hex
        payload = await run_in_threadpool(store_request, request_id, fields, forget, retain, settings)
        row = ledger.submit(name, payload, who, request_id)
        worker.wake.set()
        return request_view(row)

    @app.get("/v1/deletion-requests")
    def list_requests(who: str = Depends(actor)) -> dict[str, Any]:
        return {"requests": [request_view(r) for r in ledger.requests()]}

    @app.get("/v1/deletion-requests/{request_id}")
    def get_request(request_id: str, who: str = Depends(actor)) -> dict[str, Any]:
        row = ledger.get(request_id)
        if row is None:
            raise HTTPException(404, f"no deletion request with id {request_id!r}")
        return request_view(row)

    @app.post("/v1/deletion-requests/{request_id}/revert", status_code=202)
    def revert(request_id: str, who: str = Depends(actor)) -> dict[str, Any]:
        row = ledger.get(request_id)
        if row is None:
            raise HTTPException(404, f"no deletion request with id {request_id!r}")
        if row.status not in (APPLIED, VERIFIED):
            raise HTTPException(409, f"request {request_id} is {row.status}; only applied or verified requests "
                                     "can be reverted")
        row = ledger.request_revert(request_id, who)
        worker.wake.set()
        return request_view(row)

    @app.post("/v1/chat")
    async def chat(request: Request, who: str = Depends(actor)) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4, max_part_size=settings.max_image_bytes)
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise BadInput("image: attach the image as a file field named 'image'")
            image = check_image(await upload.read(settings.max_image_bytes + 1), settings, "image")
            instruction = form.get("instruction")
        elif content_type.startswith("application/json"):
            body = ChatIn.model_validate_json(await request.body())
            image = check_image(decode_base64(body.image, "image"), settings, "image")
            instruction = body.instruction
        else:
            raise BadInput("send application/json or multipart/form-data", 415)
        instruction = check_text(instruction, settings, "instruction")
        state = served()  # one state answers the whole query, whatever the worker swaps in meanwhile
        answer = (await run_in_threadpool(state.generate, [image], [instruction]))[0]
        return {"answer": answer, "state_version": state.version}

    @app.get("/v1/ledger")
    def read_ledger(after: int = 0, limit: int = 1000, who: str = Depends(actor)) -> dict[str, Any]:
        if limit < 1 or limit > 10000:
            raise BadInput("limit must be between 1 and 10000")
        return {"events": [event_view(e) for e in ledger.events(after, limit)]}

    @app.get("/status", response_class=HTMLResponse)
    def status(who: str = Depends(actor)) -> str:
        version = worker.served.version if worker.served else None
        return status_page.render(settings.method, version, ledger.requests(), ledger.events(limit=10000))

    return app


async def _from_form(request: Request, settings: ServiceSettings):
    """Multipart: text fields + `forget_image` / `retain_image` files. Instructions pair with
    images one to one, or one instruction applies to every image; answers are optional."""
    form = await request.form(max_files=settings.max_examples, max_fields=4 * settings.max_examples + 4 * 32,
                              max_part_size=settings.max_image_bytes)
    known = {"name", "description", "refusal", "visual_concept", "textual_concept"} | {
        f"{split}_{part}" for split in ("forget", "retain") for part in ("image", "instruction", "answer")}
    unknown = sorted(set(form.keys()) - known)
    if unknown:
        raise BadInput(f"unknown form field(s) {unknown}; valid: {sorted(known)}")
    texts = {key: [v for v in form.getlist(key) if isinstance(v, str)] for key in known}
    fields = {"name": form.get("name") or "", "description": form.get("description") or "",
              "refusals": texts["refusal"], "visual_concepts": texts["visual_concept"],
              "textual_concepts": texts["textual_concept"]}
    splits = {}
    for split in ("forget", "retain"):
        files = [f for f in form.getlist(f"{split}_image") if isinstance(f, UploadFile)]
        instructions, answers = texts[f"{split}_instruction"], texts[f"{split}_answer"]
        if len(instructions) == 1:
            instructions = instructions * len(files)
        if len(instructions) != len(files):
            raise BadInput(f"{split}: {len(files)} image(s) but {len(texts[f'{split}_instruction'])} instruction(s); "
                           "give one instruction per image, or one for all")
        if answers and len(answers) != len(files):
            raise BadInput(f"{split}: {len(files)} image(s) but {len(answers)} answer(s); give one per image or none")
        answers = answers or [""] * len(files)
        splits[split] = [(check_image(await f.read(settings.max_image_bytes + 1), settings, f"{split}[{i}]"), ins, ans)
                         for i, (f, ins, ans) in enumerate(zip(files, instructions, answers))]
    return fields, splits["forget"], splits["retain"]
