"""The status page: requests, their status and numbers, and the ledger, as plain HTML.

Rendered on the server with Jinja2's autoescaping: every request text (names,
descriptions, refusals, event details) is data and reaches the page escaped. No script.
"""

from __future__ import annotations

import json

from jinja2 import Environment

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vlforget service</title>
<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.status-verified { color: #186a18; } .status-failed { color: #a01818; } .status-reverted { color: #777; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.time { white-space: nowrap; }
pre { margin: 0; white-space: pre-wrap; font-size: 0.85em; }
</style></head>
<body>
<h1>vlforget service</h1>
<p id="summary">method <b>{{ method }}</b>; serving state version <b id="served-version">{{ version }}</b>;
{{ requests|length }} request(s), {{ events|length }} ledger event(s) shown.</p>
<h2>Deletion requests</h2>
<table id="requests">
<tr><th>#</th><th>id</th><th>name</th><th>status</th><th>state</th><th>CRR</th><th>AR</th><th>S</th><th>submitted</th><th>error</th></tr>
{% for r in requests %}
<tr data-id="{{ r.id }}"><td>{{ r.seq }}</td><td><code>{{ r.id }}</code></td><td>{{ r.name }}</td>
<td class="status-{{ r.status }}">{{ r.status }}{% if r.revert_requested %} (revert requested){% endif %}</td>
<td>{{ r.state_version if r.state_version is not none else "" }}</td>
<td class="num">{{ pct(r.crr) }}</td><td class="num">{{ pct(r.ar) }}</td><td class="num">{{ pct(r.s) }}</td>
<td class="time">{{ r.submitted_at.strftime("%Y-%m-%d %H:%M:%S") }}</td><td>{{ r.error or "" }}</td></tr>
{% endfor %}
</table>
<h2>Ledger</h2>
<table id="ledger">
<tr><th>event</th><th>time (UTC)</th><th>kind</th><th>request</th><th>state</th><th>by</th><th>detail</th></tr>
{% for e in events %}
<tr><td>{{ e.id }}</td><td class="time">{{ e.at.strftime("%Y-%m-%d %H:%M:%S") }}</td><td>{{ e.kind }}</td>
<td><code>{{ e.request_id or "" }}</code></td><td>{{ e.state_version if e.state_version is not none else "" }}</td>
<td>{{ e.actor or "" }}</td><td><pre>{{ dumps(e.detail) }}</pre></td></tr>
{% endfor %}
</table>
</body></html>
"""

_template = Environment(autoescape=True).from_string(TEMPLATE)


def pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def render(method: str, version: int | None, requests, events) -> str:
    return _template.render(method=method, version=version, requests=requests, events=events, pct=pct,
                            dumps=lambda d: json.dumps(d, sort_keys=True, ensure_ascii=False))
