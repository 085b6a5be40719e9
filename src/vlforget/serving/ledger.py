"""Every change of the service's state is one transaction that also appends its event.

Nothing here updates or deletes an event (the database refuses it too, see the
migration); a request's row is the current summary, the events are the history.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vlforget.serving.db import Event, Request, State, Token

QUEUED, APPLYING, APPLIED, VERIFIED, FAILED, REVERTED = "queued", "applying", "applied", "verified", "failed", "reverted"


class Ledger:
    def __init__(self, session_factory: sessionmaker):
        self.sessions = session_factory

    # -- events ----------------------------------------------------------------------------
    @staticmethod
    def _event(session: Session, kind: str, request_id: str | None = None, state_version: int | None = None,
               actor: str | None = None, **detail: Any) -> None:
        session.add(Event(kind=kind, request_id=request_id, state_version=state_version, actor=actor,
                          detail=detail))

    def record(self, kind: str, actor: str | None = None, **detail: Any) -> None:
        """An event that changes no row (service started, token created)."""
        with self.sessions.begin() as session:
            self._event(session, kind, actor=actor, **detail)

    def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        with self.sessions() as session:
            return list(session.scalars(select(Event).where(Event.id > after).order_by(Event.id).limit(limit)))

    # -- tokens ----------------------------------------------------------------------------------
    def add_token(self, name: str, token_hash: str) -> None:
        with self.sessions.begin() as session:
            session.add(Token(name=name, token_hash=token_hash))
            self._event(session, "token_created", actor=name, token_name=name)

    def token_name(self, token_hash: str) -> str | None:
        with self.sessions() as session:
            token = session.scalar(select(Token).where(Token.token_hash == token_hash))
            return token.name if token else None

    # -- requests --------------------------------------------------------------------------------
    def submit(self, name: str, payload: dict[str, Any], actor: str, request_id: str | None = None) -> Request:
        request = Request(id=request_id or uuid.uuid4().hex, name=name, status=QUEUED, payload=payload,
                          submitted_by=actor, revert_requested=False)
        with self.sessions.begin() as session:
            session.add(request)
            session.flush()  # the request row exists before its event references it
            self._event(session, "request_submitted", request.id, actor=actor, name=name,
                        forget_examples=len(payload["forget"]), retain_examples=len(payload["retain"]))
        return request

    def get(self, request_id: str) -> Request | None:
        with self.sessions() as session:
            return session.scalar(select(Request).where(Request.id == request_id))

    def requests(self) -> list[Request]:
        with self.sessions() as session:
            return list(session.scalars(select(Request).order_by(Request.seq)))

    def next_queued(self) -> Request | None:
        with self.sessions() as session:
            return session.scalar(select(Request).where(Request.status == QUEUED).order_by(Request.seq).limit(1))

    def next_revert(self) -> Request | None:
        with self.sessions() as session:
            return session.scalar(select(Request).where(Request.revert_requested.is_(True),
                                                        Request.status.in_([APPLIED, VERIFIED]))
                                  .order_by(Request.seq).limit(1))

    def unverified(self) -> list[Request]:
        with self.sessions() as session:
            return list(session.scalars(select(Request).where(Request.status == APPLIED).order_by(Request.seq)))

    def _set(self, session: Session, request_id: str, **fields: Any) -> Request:
        request = session.scalar(select(Request).where(Request.id == request_id).with_for_update())
        for key, value in fields.items():
            setattr(request, key, value)
        return request

    def mark_applying(self, request_id: str) -> None:
        with self.sessions.begin() as session:
            self._set(session, request_id, status=APPLYING)
            self._event(session, "request_applying", request_id)

    def requeue_interrupted(self) -> list[str]:
        """After a restart: a request caught mid-application goes back to the queue (its
        half-made state was never recorded, so nothing of it is in the served state)."""
        with self.sessions.begin() as session:
            stuck = list(session.scalars(select(Request).where(Request.status == APPLYING).with_for_update()))
            for request in stuck:
                request.status = QUEUED
                self._event(session, "request_requeued", request.id, reason="interrupted by a restart")
            return [r.id for r in stuck]

    def record_state(self, version: int, folder: str, applied: list[str], applied_request: str | None = None,
                     reverted_request: str | None = None, how: str | None = None) -> None:
        """The saved state and what it means, in one transaction: the state row, the
        request's new status and the event. Until this commits the state does not exist."""
        with self.sessions.begin() as session:
            session.add(State(version=version, folder=folder, applied=list(applied)))
            if applied_request:
                self._set(session, applied_request, status=APPLIED, state_version=version, error=None)
                self._event(session, "request_applied", applied_request, version, applied=list(applied))
            if reverted_request:
                self._set(session, reverted_request, status=REVERTED, revert_requested=False)
                self._event(session, "request_reverted", reverted_request, version, applied=list(applied), how=how)
            if not applied_request and not reverted_request:
                self._event(session, "state_created", state_version=version, applied=list(applied),
                            **({"how": how} if how else {}))

    def mark_verified(self, request_id: str, version: int, crr: float | None, ar: float | None,
                      s: float | None) -> None:
        with self.sessions.begin() as session:
            request = self._set(session, request_id, crr=crr, ar=ar, s=s)
            if request.status == APPLIED:  # a revert may have overtaken it
                request.status = VERIFIED
            self._event(session, "request_verified", request_id, version, crr=crr, ar=ar, s=s)

    def mark_failed(self, request_id: str, error: str) -> None:
        with self.sessions.begin() as session:
            self._set(session, request_id, status=FAILED, error=error)
            self._event(session, "request_failed", request_id, error=error)

    def request_revert(self, request_id: str, actor: str) -> Request:
        with self.sessions.begin() as session:
            request = self._set(session, request_id, revert_requested=True)
            self._event(session, "revert_requested", request_id, actor=actor)
            return request

    def revert_failed(self, request_id: str, error: str) -> None:
        with self.sessions.begin() as session:
            self._set(session, request_id, revert_requested=False)
            self._event(session, "revert_failed", request_id, error=error)

    # -- states --------------------------------------------------------------------------------
    def latest_state(self) -> State | None:
        with self.sessions() as session:
            return session.scalar(select(State).order_by(State.version.desc()).limit(1))

    def states(self) -> list[State]:
        with self.sessions() as session:
            return list(session.scalars(select(State).order_by(State.version)))
