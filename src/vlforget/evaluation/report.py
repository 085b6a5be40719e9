"""Reports: a self-contained HTML page and a markdown summary for one or more runs.

Plots (matplotlib, embedded as base64 PNG so the HTML is one file): CRR and AR per
step per method, a request x step CRR heatmap per run (does an early refusal hold?),
the request x refuser routing heatmap for methods that expose one, and example images
with the answers before and after unlearning.

Names and text from users (request names, method names) are data: they are HTML-escaped
in the page and `$`-escaped in plots (`plain`), so they are never read as markup or as
matplotlib mathtext.
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SUMMARY_KEYS = ["crr", "ar", "s", "drr", "leak", "overrefusal"]  # the terminal table (fits 80 columns)
# Refusal quality, a second small terminal table under it (a 7th column would not fit 80).
WORDING_KEYS = ["clean_refusal"]
# The report and summary.md add them and the retain answers' agreement with the zero-shot model.
REPORT_KEYS = SUMMARY_KEYS + WORDING_KEYS + ["retain_rougeL", "retain_similarity"]
LABELS = {"crr": "CRR", "ar": "AR", "s": "S", "drr": "dRR", "leak": "Leak", "overrefusal": "Over-refusal",
          "clean_refusal": "Clean refusal", "retain_rougeL": "Retain ROUGE-L", "retain_similarity": "Retain sim"}


def fmt(value, width: int = 0) -> str:
    """A percentage to one decimal, or "n/a" when the metric is undefined (None or NaN):
    loaded datasets have no utility split (S), a request may have no test pairs."""
    if value is None or (isinstance(value, float) and value != value):
        return f"{'n/a':>{width}}"
    return f"{value:{width}.1f}"


def plain(text) -> str:
    """`text` as matplotlib shows it literally: `$` escaped, so no mathtext is parsed."""
    return str(text).replace("$", r"\$")


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def curves_plot(runs: dict[str, dict]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, ("crr", "ar")):
        for name, results in runs.items():
            steps = results["steps"]
            values = [np.nan if s.get(key) is None else s[key] for s in steps]
            ax.plot([s["step"] for s in steps], values, marker="o", ms=3, label=plain(name))
        ax.set_title(f"{LABELS[key]} after each request")
        ax.set_xlabel("request (step)")
        ax.set_ylabel("percent")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def crr_heatmap(results: dict) -> str:
    """Rows: requests; columns: steps; cell: CRR of that request's forget data at that step."""
    names = [r["name"] for r in results["requests"]]
    steps = results["steps"]
    grid = np.full((len(names), len(steps)), np.nan)
    for j, step in enumerate(steps):
        for i, name in enumerate(names):
            value = step.get("per_request", {}).get(name, {}).get("crr")
            if value is not None:
                grid[i, j] = value
    fig, ax = plt.subplots(figsize=(1.2 + 0.42 * max(len(steps), 2), 1.0 + 0.3 * len(names)))
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(names)), [plain(n) for n in names], fontsize=7)
    ax.set_xticks(range(len(steps)), [s["step"] for s in steps], fontsize=7)
    ax.set_xlabel("step")
    ax.set_title(plain(f"{results['method']}: CRR per request over steps"), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    return _png(fig)


def routing_heatmap(results: dict) -> str | None:
    extras = results.get("extras") or {}
    routing = extras.get("routing") or extras.get("refuser_loads")  # CORE: request x refuser loads
    if not routing:
        return None
    names = list(routing)
    grid = np.array([routing[n] for n in names])
    fig, ax = plt.subplots(figsize=(1.5 + 0.35 * grid.shape[1], 1.0 + 0.3 * len(names)))
    image = ax.imshow(grid, cmap="magma", aspect="auto")
    ax.set_yticks(range(len(names)), [plain(n) for n in names], fontsize=7)
    ax.set_xticks(range(grid.shape[1]), range(grid.shape[1]), fontsize=7)
    ax.set_xlabel("refuser")
    ax.set_title(plain(f"{results['method']}: expert load per request"), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    return _png(fig)


# Metrics that only mean something for a method that refuses (see `Method.refuses`).
REFUSAL_KEYS = ("crr", "crr_pooled", "drr", "clean_refusal")


def _cell(summary: dict, key: str, refuses: bool) -> str:
    """`key` is <metric>_avg or <metric>_last."""
    if key.rsplit("_", 1)[0] in REFUSAL_KEYS and not refuses:
        return "n/a"  # never refuses by design: CRR 0 / dRR 50 would rank it on nothing
    return fmt(summary.get(key))


def reads_text(reads) -> str:
    """What a method read (`Method.reads`) as a table cell: "forget+retain", "nothing"; "?" undeclared."""
    if reads is None:
        return "?"  # undeclared, or a results.json written before methods declared what they read
    return "+".join(reads) if reads else "nothing"


def summary_rows(runs: dict[str, dict], keys: list[str] = SUMMARY_KEYS) -> list[list[str]]:
    rows = []
    for name, results in runs.items():
        summary = results.get("summary") or {}
        refuses = results.get("refuses", True)
        cells = [_cell(summary, f"{k}_{w}", refuses) for k in keys for w in ("avg", "last")]
        seconds = summary.get("unlearn_seconds") or []
        # Median: one request slowed by a noisy neighbour should not move the column.
        cells.append(f"{statistics.median(seconds):.1f}" if seconds else "n/a")
        rows.append([name] + cells)
    return rows


SUMMARY_HEADER = ["method"] + [f"{LABELS[k]} {w}" for k in REPORT_KEYS for w in ("Avg", "Last")] + ["s/request (median)"]


VIEW_KEYS = ["crr", "ar", "s", "leak", "overrefusal"]
VIEW_LABELS = {"request": "request phrasings", "pressure": "pressure sentences"}


def view_rows(runs: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): every extra view's Last values per method (benchmark v2); no views, no rows."""
    views = sorted({v for r in runs.values() for v in ((r.get("summary") or {}).get("views") or {})})
    if not views:
        return [], []
    header = ["method"] + [f"{LABELS[k]} Last ({v})" for v in views for k in VIEW_KEYS]
    rows = []
    for name, results in runs.items():
        per_view = (results.get("summary") or {}).get("views") or {}
        refuses = results.get("refuses", True)
        rows.append([name] + [_cell(per_view.get(v, {}), f"{k}_last", refuses) for v in views for k in VIEW_KEYS])
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def with_reads(header: list[str], rows: list[list[str]], runs: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The table with a "reads" column after the method's name (what each method read: information parity)."""
    reads = [reads_text(results.get("reads")) for results in runs.values()]
    return [header[0], "reads", *header[1:]], [[row[0], r, *row[1:]] for row, r in zip(rows, reads)]


def markdown_summary(runs: dict[str, dict]) -> str:
    lines = _markdown_table(*with_reads(SUMMARY_HEADER, summary_rows(runs, REPORT_KEYS), runs))
    header, rows = view_rows(runs)
    if rows:
        lines += ["", "The same test pairs asked otherwise (after the last request; the table above is on "
                  "evaluation phrasings, which no method trained on):", ""]
        lines += _markdown_table(header, rows)
    return "\n".join(lines) + "\n"


MODE_COLUMNS = [("n", "pairs"), ("refused", "refused %"), ("crr", "context-correct %"), ("answered", "answered %")]


def mode_rows(results: dict) -> list[list[str]]:
    """CORE's HH/HU/UH/UU breakdown after the last request: one row per mode."""
    steps = results.get("steps") or []
    modes = steps[-1].get("per_mode") if steps else None
    return [[mode] + [str(v[k]) if k == "n" else fmt(v[k]) for k, _ in MODE_COLUMNS]
            for mode, v in (modes or {}).items()]


def mode_markdown(runs: dict[str, dict]) -> str:
    parts = []
    for name, results in runs.items():
        rows = mode_rows(results)
        if rows:
            header = ["mode"] + [label for _, label in MODE_COLUMNS]
            parts.append(f"\n{name}: HH/HU/UH must be refused, UU answered (after the last request)\n\n"
                         + "| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|\n"
                         + "".join("| " + " | ".join(row) + " |\n" for row in rows))
    return "".join(parts)


def _modes_html(results: dict) -> str:
    rows = mode_rows(results)
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ["mode"] + [label for _, label in MODE_COLUMNS])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return ("<h3>By mode after the last request (HH, HU, UH must be refused; UU answered)</h3>"
            f"<table><tr>{head}</tr>{body}</table>")


def _examples_html(results: dict, run_dir: Path) -> str:
    examples = results.get("examples") or []
    if not examples:
        return ""
    cells = []
    for ex in examples:
        image_path = run_dir / ex["image"]
        data = base64.b64encode(image_path.read_bytes()).decode() if image_path.exists() else ""
        cells.append(
            f"<div class='ex'><img src='data:image/png;base64,{data}' width='96' height='96'>"
            f"<div><b>{html.escape(ex['request'])}</b> ({html.escape(ex['split'])})<br>"
            f"Q: {html.escape(ex['instruction'])}<br>before: {html.escape(ex['before'])}<br>"
            f"after: {html.escape(ex['after'] or '')}</div></div>")
    return f"<h3>{html.escape(results['method'])}: examples before and after</h3><div class='exs'>{''.join(cells)}</div>"


def _attacks_html(run_dir: Path) -> str:
    """The run's attack results (`vlforget attack`), if any were saved."""
    from vlforget.evaluation.attacks.tables import attack_rows, read_attacks

    rows = attack_rows(read_attacks(run_dir))
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("attack", "step", "requests", "numbers (docs/metrics.md, Attacks)"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<h3>Attacks: does the forgetting hold?</h3><table class='attacks'><tr>{head}</tr>{body}</table>"


def write_report(runs: dict[str, dict], run_dirs: dict[str, Path], out_dir: Path, title: str = "vlforget report") -> Path:
    """Write `report.html` and `summary.md` into out_dir; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = with_reads(SUMMARY_HEADER, summary_rows(runs, REPORT_KEYS), runs)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    table += "</table>"
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary (percent)</h2>", table,
             "<p>CRR: context-aware refusal rate on forget data of requests seen so far; AR: answer rate "
             "(answered correctly) on retain data; S: utility relative to the original model; dRR: "
             "refusal-rate deviation (lower is better); Clean refusal: share of the context-correct refusals "
             "that are exactly one of the request's refusal sentences (no stray or repeated words). "
             "Avg = mean over steps; Last = after the final request.</p>",
             "<h2>Per-step curves</h2>", f"<img class='plot' alt='curves' src='data:image/png;base64,{curves_plot(runs)}'>"]
    for name, results in runs.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(_modes_html(results))
        parts.append(f"<img class='plot' alt='crr-heatmap' src='data:image/png;base64,{crr_heatmap(results)}'>")
        routing = routing_heatmap(results)
        if routing:
            parts.append(f"<img class='plot' alt='routing-heatmap' src='data:image/png;base64,{routing}'>")
        seconds = (results.get("summary") or {}).get("unlearn_seconds") or []
        parts.append("<p>seconds per request: " + ", ".join(f"{s:.1f}" for s in seconds) + "</p>")
        parts.append(_examples_html(results, run_dirs[name]))
        parts.append(_attacks_html(run_dirs[name]))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:12px}.plot{max-width:100%}"
             ".exs{display:flex;flex-wrap:wrap}.ex{display:flex;gap:6px;width:360px;margin:4px;font-size:12px}"
             "img{image-rendering:pixelated}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    path = out_dir / "report.html"
    path.write_text(page)
    (out_dir / "summary.md").write_text(f"# {title}\n\n" + markdown_summary(runs) + mode_markdown(runs))
    return path
