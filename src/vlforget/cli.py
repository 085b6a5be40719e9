"""The `vlforget` command.

Errors a user can make (missing file, unknown method, bad config) print one clear
line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Continual unlearning for vision-language models.")
console = Console()
err = Console(stderr=True)

DEFAULT_METHOD = "idknll"
SUMMARY_KEYS = ["crr", "ar", "s", "drr", "leak", "overrefusal"]


def user_errors(fn):
    """Turn the errors a user can cause into one line and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError) as error:
            message = error.args[0] if error.args else str(error)
            err.print(f"[bold red]error:[/] {message}")
            raise typer.Exit(2)
    return wrapper


def _benchmark(seed: int, tasks: Optional[Path], paraphrases: Optional[Path]):
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig

    return Benchmark(BenchmarkConfig(seed=seed, requests_file=str(tasks) if tasks else None,
                                     paraphrases_file=str(paraphrases) if paraphrases else None))


def _backbone_loader(model: Optional[str]):
    from vlforget.models.backbone import Backbone

    return lambda: Backbone.load(model)


def _overrides(config: Optional[Path]) -> dict:
    from vlforget.configs import read_mapping

    return read_mapping(config) if config else {}


def summary_table(rows: dict[str, dict], title: str = "Summary (percent)") -> Table:
    table = Table(title=title)
    table.add_column("method")
    for key in SUMMARY_KEYS:
        table.add_column(f"{key.upper()} Avg", justify="right")
        table.add_column(f"{key.upper()} Last", justify="right")
    table.add_column("s/request", justify="right")
    for name, summary in rows.items():
        cells = []
        for k in SUMMARY_KEYS:
            cells += [f"{summary.get(f'{k}_avg', float('nan')):.1f}", f"{summary.get(f'{k}_last', float('nan')):.1f}"]
        seconds = summary.get("unlearn_seconds") or []
        cells.append(f"{sum(seconds) / max(len(seconds), 1):.1f}")
        table.add_row(name, *cells)
    return table


def summary_markdown(rows: dict[str, dict]) -> str:
    header = ["method"] + [f"{k.upper()} {w}" for k in SUMMARY_KEYS for w in ("Avg", "Last")] + ["s/request"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in rows.items():
        cells = [f"{summary.get(f'{k}_{w}', float('nan')):.1f}" for k in SUMMARY_KEYS for w in ("avg", "last")]
        seconds = summary.get("unlearn_seconds") or []
        cells.append(f"{sum(seconds) / max(len(seconds), 1):.1f}")
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines) + "\n"


def run_one(method: str, out: Path, model: Optional[str], config: Optional[Path], tasks: Optional[Path],
            seed: int, paraphrases: Optional[Path], limit: Optional[int], judge_name: str) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vlforget.evaluation.judge import make_judge
    from vlforget.evaluation.runner import ContinualRun

    overrides = {"seed": seed, **_overrides(config)}
    run = ContinualRun(method, _benchmark(seed, tasks, paraphrases), out, _backbone_loader(model),
                       overrides, make_judge(judge_name), limit)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(method, total=len(run.requests))

        def progress(event, info):
            if event == "start":
                bar.update(task, completed=info["done"])
            elif event in ("unlearn", "evaluate"):
                bar.update(task, description=f"{method}: {event} {info['step']:02d} {info['request']}")
            elif event == "step":
                bar.update(task, advance=1)
                bar.console.print(f"  step {info['step']:02d} {info['request']:<28} CRR {info['crr']:5.1f}  "
                                  f"AR {info['ar']:5.1f}  S {info['s']:5.1f}  dRR {info['drr']:5.1f}  "
                                  f"({info['unlearn_seconds']:.1f} s)")
        run.progress = progress
        return run.run()


@app.command()
@user_errors
def methods(verbose: bool = typer.Option(False, "--verbose", "-v", help="also list every config field")):
    """List the registered unlearning methods."""
    from vlforget.configs import config_help
    from vlforget.methods import available_methods

    for name, cls in available_methods().items():
        console.print(f"[bold]{name:<14}[/] {cls.description}")
        if verbose:
            for field, default, text in config_help(cls.config_class):
                console.print(f"    {field} = {default!r}: {text}")


@app.command()
@user_errors
def run(method: str = typer.Option(DEFAULT_METHOD, help="registered method name (see `vlforget methods`)"),
        out: Path = typer.Option(..., help="output folder (results.json, states, report)"),
        model: Optional[str] = typer.Option(None, help="backbone checkpoint folder; default: the built-in model"),
        config: Optional[Path] = typer.Option(None, help="JSON/YAML file of method config overrides"),
        tasks: Optional[Path] = typer.Option(None, help="JSON/YAML request sequence; default: the built-in 16"),
        seed: int = typer.Option(0, help="seed for the benchmark and the method"),
        paraphrases: Optional[Path] = typer.Option(None, help="file mapping intent -> evaluation templates"),
        limit: Optional[int] = typer.Option(None, help="only the first N requests"),
        judge: str = typer.Option("minilm", help="refusal judge: minilm or lexical")):
    """Run one method over the request sequence (resumes an interrupted run in --out)."""
    results = run_one(method, out, model, config, tasks, seed, paraphrases, limit, judge)
    console.print(summary_table({method: results["summary"]}))
    console.print(f"results: {out / 'results.json'}")


@app.command()
@user_errors
def compare(methods: str = typer.Option(..., help="comma-separated method names"),
            out: Path = typer.Option(..., help="folder; each method runs in OUT/<method>"),
            model: Optional[str] = typer.Option(None, help="backbone checkpoint folder"),
            tasks: Optional[Path] = typer.Option(None, help="JSON/YAML request sequence"),
            seed: int = typer.Option(0, help="seed"),
            limit: Optional[int] = typer.Option(None, help="only the first N requests"),
            judge: str = typer.Option("minilm", help="refusal judge: minilm or lexical")):
    """Run several methods on the same sequence and print one side-by-side table."""
    from vlforget.methods import method_class

    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        method_class(name)  # fail fast on a typo, before hours of running
    rows = {}
    for name in names:
        rows[name] = run_one(name, out / name, model, None, tasks, seed, None, limit, judge)["summary"]
    console.print(summary_table(rows, "Comparison (percent)"))
    (out / "comparison.md").write_text(summary_markdown(rows))
    console.print(f"table: {out / 'comparison.md'}")


@app.command()
@user_errors
def demo(out: Path = typer.Option(Path("runs/demo"), help="output folder"),
         method: str = typer.Option(DEFAULT_METHOD, help="method to run"),
         limit: Optional[int] = typer.Option(None, help="only the first N requests")):
    """The main job: the built-in 16-request benchmark on the built-in model."""
    results = run_one(method, out, None, None, None, 0, None, limit, "minilm")
    console.print(summary_table({method: results["summary"]}))
    console.print(f"results: {out / 'results.json'}")


@app.command("base-eval")
@user_errors
def base_eval(model: Optional[str] = typer.Option(None, help="backbone checkpoint folder"),
              as_json: bool = typer.Option(False, "--json", help="print JSON"),
              seed: int = typer.Option(0, help="benchmark seed")):
    """Per-intent exact match and refusal rates of a model on the held-out general split."""
    from vlforget.models.backbone import Backbone
    from vlforget.models.evaluate import base_eval as evaluate

    report = evaluate(Backbone.load(model), _benchmark(seed, None, None).general_test())
    if as_json:
        print(json.dumps(report, indent=1))
        return
    table = Table(title="Base model on the held-out general split")
    table.add_column("key")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if isinstance(value, dict):
            for k, v in value.items():
                table.add_row(f"{key}.{k}", f"{v:.1f}" if isinstance(v, float) else str(v))
        else:
            table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
@user_errors
def pretrain(out: Path = typer.Option(..., help="folder to write the model into"),
             seed: int = typer.Option(0, help="seed")):
    """Reproduce the built-in model from the benchmark's general data."""
    from vlforget.models.tiny import pretrain as train

    train(out, seed=seed)


def main() -> None:  # pragma: no cover
    sys.exit(app())
