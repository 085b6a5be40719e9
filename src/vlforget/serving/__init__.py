"""The deletion-request service (`vlforget serve`).

One module per job: `settings` (where things live, limits), `db` (tables, engine,
migrations), `ledger` (every state change as one transaction plus one append-only
event), `auth` (API tokens, hashed at rest), `uploads` (checked images under generated
names), `states` (method states saved atomically per version), `worker` (the one thread
that applies requests in order), `status_page` (the HTML page), `app` (FastAPI routes).
"""
