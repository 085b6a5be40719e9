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
from rich.markup import escape
from rich.table import Table

from vlforget.configs import did_you_mean

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Continual unlearning for vision-language models.")
console = Console()
err = Console(stderr=True)

DEFAULT_METHOD = "core"


def user_errors(fn):
    """Turn the errors a user can cause into one line and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError) as error:
            message = error.args[0] if error.args else str(error)
            err.print(f"[bold red]error:[/] {escape(str(message))}", soft_wrap=True, highlight=False)
            raise typer.Exit(2)
    return wrapper


VERSION_HELP = ("built-in benchmark version: 2 (request/evaluation phrasings, pressure view) or 1 "
                "(reproduces v1 results bit for bit, with the v1 built-in model)")


def _benchmark(seed: int, tasks: Optional[Path], paraphrases: Optional[Path],
               dataset: Optional[str] = None, data: Optional[Path] = None, version: int = 2,
               sequence: str = "test"):
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig

    if dataset or data:
        if not (dataset and data):
            raise ValueError("--dataset FORMAT and --data PATH go together")
        from vlforget.data.loaders.sequence import LoadedSequence

        return LoadedSequence(dataset, data)

    return Benchmark(BenchmarkConfig(seed=seed, requests_file=str(tasks) if tasks else None,
                                     paraphrases_file=str(paraphrases) if paraphrases else None,
                                     version=version, sequence=sequence))


DEVICE_HELP = "where the model runs: auto (a GPU when present, else CPU), cpu, cuda or cuda:N"
DTYPE_HELP = "weights dtype: auto (the checkpoint's own on GPU, float32 on CPU), float32, float16 or bfloat16"


def _placement(device: str, dtype: str) -> tuple:
    """(torch device, dtype) for Backbone.load; prints one note when CPU overrides half precision."""
    from vlforget.models.placement import resolve_device, resolve_precision

    where = resolve_device(device)
    precision, note = resolve_precision(dtype, where)
    if note:
        err.print(f"[yellow]{escape(note)}[/]", highlight=False)
    return where, precision


def _backbone_loader(model: Optional[str], placement: tuple = ("cpu", None), version: int = 2):
    """Loads `model`, or the built-in model of benchmark `version` (v1 keeps its own)."""
    from vlforget.models.backbone import Backbone
    from vlforget.models.checkpoints import builtin_path

    return lambda: Backbone.load(model if model is not None else builtin_path(version), *placement)


def _overrides(config: Optional[Path]) -> dict:
    from vlforget.configs import read_mapping

    return read_mapping(config) if config else {}


def _command_settings(config: Optional[Path], valid: list[str]) -> dict:
    """A command's own options from a --config file; an unknown key names the nearest valid one."""
    settings = _overrides(config)
    for key in settings:
        if key not in valid:
            raise ValueError(f"unknown key {key!r} in {config}"
                             + (did_you_mean(key, valid) or f"; valid keys: {', '.join(valid)}"))
    return settings


def summary_table(runs: dict[str, dict], title: str = "Summary (percent)") -> Table:
    """Compact terminal table: one row per method, each metric as "avg/last" so it fits 80 columns."""
    from rich import box

    from vlforget.evaluation.report import LABELS, SUMMARY_KEYS, summary_rows

    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                  caption="each cell: mean over steps / after the last request; s/req: median seconds per request")
    table.add_column("method", no_wrap=True)
    for key in SUMMARY_KEYS:
        table.add_column(LABELS[key] if key != "overrefusal" else "OverRef", justify="right", no_wrap=True)
    table.add_column("s/req", justify="right", no_wrap=True)
    for row in summary_rows(runs):
        pairs = [f"{row[1 + 2 * i]}/{row[2 + 2 * i]}" for i in range(len(SUMMARY_KEYS))]
        table.add_row(row[0], *pairs, row[-1])
    return table


def _finish(runs: dict[str, dict], dirs: dict[str, Path], out: Path, title: str = "Summary") -> None:
    from vlforget.evaluation.report import write_report
    from vlforget.methods.training import is_main_process

    if not is_main_process():  # under `accelerate launch`, one process prints and writes the report
        return

    console.print(summary_table(runs, f"{title} (percent)"))
    report = write_report(runs, dirs, out, title=f"vlforget {title.lower()}: {', '.join(runs)}")
    console.print(f"results: {out / 'results.json' if len(runs) == 1 else out}")
    console.print(f"report:  {report}")


def run_one(method: str, out: Path, model: Optional[str], config: Optional[Path], tasks: Optional[Path],
            seed: int, paraphrases: Optional[Path], limit: Optional[int], judge_name: str,
            dataset: Optional[str] = None, data: Optional[Path] = None, overrides: Optional[dict] = None,
            placement: tuple = ("cpu", None), version: int = 2, sequence: str = "test",
            quiet: bool = False, with_views: bool = True) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vlforget.evaluation.judge import make_judge
    from vlforget.evaluation.runner import ContinualRun

    overrides = {"seed": seed, **(overrides or {}), **_overrides(config)}
    run = ContinualRun(method, _benchmark(seed, tasks, paraphrases, dataset, data, version, sequence), out,
                       _backbone_loader(model, placement, version), overrides, make_judge(judge_name), limit,
                       with_views=with_views)
    from vlforget.methods.training import is_main_process

    if not is_main_process() or quiet:
        return run.run()
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
                bar.console.print(f"  {info['step']:02d} {info['request'][:24]:<24} CRR {info['crr']:5.1f} "
                                  f"AR {info['ar']:5.1f} S {info['s']:5.1f} dRR {info['drr']:5.1f} "
                                  f"{info['unlearn_seconds']:5.1f}s", no_wrap=True)
        run.progress = progress
        return run.run()


@app.command()
@user_errors
def methods(verbose: bool = typer.Option(False, "--verbose", "-v", help="also list every config field"),
            config: Optional[Path] = typer.Option(None, help="JSON/YAML file: method name -> its config overrides "
                                                  "(as `compare --config`): check it and show the effective "
                                                  "config of each method it names (* = set by the file)")):
    """List the registered unlearning methods (or check a config file against them)."""
    from vlforget.configs import build_config, config_help
    from vlforget.methods import available_methods, method_class

    per_method = _overrides(config)
    for name, overrides in per_method.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"{config}: {name!r} should map to that method's config overrides "
                             f"(method name -> {{field: value}}), got {type(overrides).__name__}")
        build_config(method_class(name).config_class, overrides, where=f"{config} ({name})")
    listed = {name: method_class(name) for name in per_method} if config else available_methods()
    for name, cls in listed.items():
        console.print(f"[bold]{name:<14}[/] {cls.description}")
        if verbose or config:
            overrides = per_method.get(name, {})
            for field, default, text in config_help(cls.config_class):
                value, mark = (overrides[field], "*") if field in overrides else (default, " ")
                console.print(f"   {mark}{field} = {value!r}: {text}", highlight=False)


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
        judge: str = typer.Option("minilm", help="refusal judge: minilm or lexical"),
        dataset: Optional[str] = typer.Option(None, help="load a published benchmark instead: core, safeeraser, "
                                              "mllmu, clear, fiubench, llava_json, jsonl, parquet"),
        data: Optional[Path] = typer.Option(None, help="with --dataset: the folder or file holding it"),
        device: str = typer.Option("auto", help=DEVICE_HELP),
        dtype: str = typer.Option("auto", help=DTYPE_HELP),
        benchmark_version: int = typer.Option(2, help=VERSION_HELP)):
    """Run one method over the request sequence (resumes an interrupted run in --out)."""
    placement = _placement(device, dtype)
    results = run_one(method, out, model, config, tasks, seed, paraphrases, limit, judge, dataset, data,
                      placement=placement, version=benchmark_version)
    _finish({method: results}, {method: out}, out)


@app.command()
@user_errors
def compare(methods: str = typer.Option(..., help="comma-separated method names"),
            out: Path = typer.Option(..., help="folder; each method runs in OUT/<method>"),
            model: Optional[str] = typer.Option(None, help="backbone checkpoint folder"),
            tasks: Optional[Path] = typer.Option(None, help="JSON/YAML request sequence"),
            seed: int = typer.Option(0, help="seed"),
            limit: Optional[int] = typer.Option(None, help="only the first N requests"),
            judge: str = typer.Option("minilm", help="refusal judge: minilm or lexical"),
            config: Optional[Path] = typer.Option(None, help="JSON/YAML file: method name -> its config overrides"),
            device: str = typer.Option("auto", help=DEVICE_HELP),
            dtype: str = typer.Option("auto", help=DTYPE_HELP),
            benchmark_version: int = typer.Option(2, help=VERSION_HELP),
            tuned: Path = typer.Option(Path("results/tuned"), help="tuning records (`vlforget tune`): a method "
                                       "with one runs at its chosen settings, under --config's overrides"),
            defaults: bool = typer.Option(False, "--defaults", help="ignore tuning records: every method at its "
                                          "defaults (plus --config)")):
    """Run several methods on the same sequence and print one side-by-side table."""
    from vlforget.configs import build_config, read_mapping
    from vlforget.data.benchmark import BENCHMARK_VERSIONS
    from vlforget.evaluation.tuning import tuned_overrides
    from vlforget.methods import method_class

    names = [m.strip() for m in methods.split(",") if m.strip()]
    per_method = read_mapping(config) if config else {}
    for key in per_method:
        if key not in names:
            raise ValueError(f"{config}: {key!r} is not one of --methods" + did_you_mean(key, names))
    settings, notes = {}, []
    for name in names:
        cls = method_class(name)  # fail fast on a typo, before hours of running
        chosen, note = (None, f"{name}: defaults (--defaults)") if defaults else tuned_overrides(
            tuned, name, BENCHMARK_VERSIONS.get(benchmark_version, ""))
        settings[name] = {**(chosen or {}), **(per_method.get(name) or {})}
        notes.append(note + (f"; --config sets {json.dumps(per_method[name], sort_keys=True)}"
                             if per_method.get(name) else ""))
        build_config(cls.config_class, settings[name], where=f"{config} ({name})")
    for note in notes:
        console.print(f"[dim]{escape(note)}[/]", highlight=False)
    placement = _placement(device, dtype)
    runs = {name: run_one(name, out / name, model, None, tasks, seed, None, limit, judge,
                          overrides=settings[name], placement=placement, version=benchmark_version)
            for name in names}
    _finish(runs, {name: out / name for name in names}, out, "Comparison")
    from vlforget.evaluation.report import markdown_summary

    from vlforget.methods.training import is_main_process

    if is_main_process():
        settings_note = "\n".join(f"- {note}" for note in notes)
        (out / "comparison.md").write_text(markdown_summary(runs) + "\nSettings:\n\n" + settings_note + "\n")
        console.print(f"table: {out / 'comparison.md'}")


@app.command()
@user_errors
def tune(method: str = typer.Option(..., help="registered method name (its grid: vlforget/methods/tuning_grids.py)"),
         out: Path = typer.Option(Path("results/tuned"), help="folder for METHOD.json / METHOD.md (the record)"),
         work: Path = typer.Option(Path("runs/tune"), help="folder for the grid points' runs (METHOD/point-*)"),
         seed: int = typer.Option(0, help="seed for the benchmark and the method"),
         limit: Optional[int] = typer.Option(None, help="only the first N validation requests (quick checks)"),
         judge: str = typer.Option("minilm", help="refusal judge: minilm or lexical"),
         device: str = typer.Option("auto", help=DEVICE_HELP),
         dtype: str = typer.Option("auto", help=DTYPE_HELP)):
    """Tune a method: its grid on the validation sequence (never the test one), one rule, resumable."""
    from vlforget.data.benchmark import BENCHMARK_VERSIONS
    from vlforget.evaluation.tuning import RULE
    from vlforget.evaluation.tuning import tune as run_tuning
    from vlforget.methods import method_class
    from vlforget.methods.tuning_grids import grid_for

    cls = method_class(method)
    grid = grid_for(method)
    placement = _placement(device, dtype)
    n_requests = len(_benchmark(seed, None, None, version=2, sequence="validation").specs)

    def run_point(overrides: dict, folder: Path) -> dict:
        return run_one(method, folder, None, None, None, seed, None, limit, judge, overrides=overrides,
                       placement=placement, version=2, sequence="validation", quiet=True, with_views=False)

    console.print(f"tuning {method}: {len(grid)} grid points on the validation sequence; rule: {RULE}",
                  highlight=False)
    record = run_tuning(method, grid, run_point, out, work / method, BENCHMARK_VERSIONS[2], seed, cls.refuses,
                        min(limit or n_requests, n_requests), log=lambda m: console.print(m, highlight=False))
    console.print(f"chosen: {json.dumps(record['chosen'], sort_keys=True)}  record: {out / (method + '.json')}",
                  highlight=False)


@app.command()
@user_errors
def demo(out: Path = typer.Option(Path("runs/demo"), help="output folder"),
         method: str = typer.Option(DEFAULT_METHOD, help="method to run"),
         limit: Optional[int] = typer.Option(None, help="only the first N requests"),
         config: Optional[Path] = typer.Option(None, help="JSON/YAML file of method config overrides")):
    """The main job: the built-in 16-request benchmark on the built-in model."""
    results = run_one(method, out, None, config, None, 0, None, limit, "minilm")
    _finish({method: results}, {method: out}, out)


@app.command("base-eval")
@user_errors
def base_eval(model: Optional[str] = typer.Option(None, help="backbone checkpoint folder"),
              as_json: bool = typer.Option(False, "--json", help="print JSON"),
              seed: int = typer.Option(0, help="benchmark seed"),
              config: Optional[Path] = typer.Option(None, help="JSON/YAML file of benchmark config fields "
                                                    "(e.g. n_general_test)"),
              device: str = typer.Option("auto", help=DEVICE_HELP),
              dtype: str = typer.Option("auto", help=DTYPE_HELP),
              benchmark_version: int = typer.Option(2, help=VERSION_HELP)):
    """Per-intent exact match and refusal rates of a model on the held-out general split.

    Benchmark v2: the top-level numbers are on evaluation phrasings (what users ask);
    `phrasings` holds the same report for each phrasing group and the pressure view."""
    from vlforget.configs import build_config
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig
    from vlforget.models.evaluate import base_eval_views

    bench = Benchmark(build_config(BenchmarkConfig, {"seed": seed, "version": benchmark_version,
                                                     **_overrides(config)}, where=f"{config}"))
    backbone = _backbone_loader(model, _placement(device, dtype), bench.config.version)()
    report = base_eval_views(backbone, bench)
    if as_json:
        print(json.dumps(report, indent=1))
        return
    table = Table(title="Base model on the held-out general split")
    table.add_column("key")
    table.add_column("value", justify="right")
    for key, value in _flatten(report):
        table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value))
    console.print(table)


def _flatten(report: dict, prefix: str = ""):
    """(dotted key, value) for every leaf of a nested report."""
    for key, value in report.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"could not decode image {path}: {error}") from error


@app.command()
@user_errors
def chat(instruction: str = typer.Argument(..., help="the instruction, e.g. 'what colour is the star?'"),
         image: Path = typer.Option(..., help="image file (any size; resized to the model's input)"),
         state: Optional[Path] = typer.Option(None, help="a run folder: answer with its unlearned state"),
         step: Optional[int] = typer.Option(None, help="with --state: the state after this step (0 = base)"),
         model: Optional[str] = typer.Option(None, help="backbone checkpoint folder"),
         config: Optional[Path] = typer.Option(None, help="with --state: JSON/YAML method config overrides "
                                               "(e.g. CORE's threshold)"),
         device: str = typer.Option("auto", help=DEVICE_HELP),
         dtype: str = typer.Option("auto", help=DTYPE_HELP)):
    """Answer one instruction about one image, with the base model or a run's state."""
    picture = _load_image(image)
    if config is not None and state is None:
        raise ValueError("--config needs --state (it overrides the run's method config)")
    placement = _placement(device, dtype)
    if state is None:
        from vlforget.models.backbone import Backbone

        answer = Backbone.load(model, *placement).generate([picture], [instruction])[0]
        console.print(f"[dim](base model)[/] {answer}")
        return
    from vlforget.evaluation.run_state import load_run_state

    method, results = load_run_state(state, step, model, _overrides(config), placement)
    applied = ", ".join(method.applied) or "none"
    console.print(f"[dim]({results['method']}, requests applied: {applied})[/]")
    console.print(method.generate([picture], [instruction])[0])


@app.command()
@user_errors
def inspect(run_dir: Path = typer.Argument(..., help="a run folder written by `vlforget run`"),
            request: Optional[str] = typer.Option(None, help="also show this request's CRR and AR after every step "
                                                  "(does its refusal hold?)"),
            config: Optional[Path] = typer.Option(None, help="JSON/YAML file of this command's options (request)")):
    """Which requests a run applied, their scopes, and their measured verification numbers."""
    from vlforget.evaluation.runner import RESULTS_FILE

    focus = _command_settings(config, ["request"]).get("request", request)  # the loops below reuse `request`
    path = run_dir / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no run in {run_dir} (missing {RESULTS_FILE})")
    results = json.loads(path.read_text())
    steps = results["steps"]
    names = [r["name"] for r in results["requests"]]
    if focus is not None and focus not in names:
        raise ValueError(f"no request {focus!r} in this run"
                         + (did_you_mean(focus, names) or f"; it has: {', '.join(names)}"))
    last = steps[-1] if steps else {}
    console.print(f"[bold]{results['method']}[/]  benchmark {results['benchmark_version']}  "
                  f"seed {results['seed']}  {len(steps)}/{len(results['requests'])} requests applied")
    from rich import box

    table = Table(title="Requests", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    table.add_column("step", justify="right")
    table.add_column("request", no_wrap=True)
    table.add_column("scope (mode: visual / intents)")
    for column in ("CRR now", "AR now", "s"):
        table.add_column(column, justify="right", no_wrap=True)
    for i, request in enumerate(results["requests"]):
        per = last.get("per_request", {}).get(request["name"], {})
        applied = i < len(steps)
        scope = request["scope"]
        visual = ",".join(f"{k}={v}" for k, v in (scope.get("visual") or {}).items())
        intents = ",".join(scope.get("intents") or [])
        table.add_row(str(i + 1) if applied else "-", request["name"], f"{scope['mode']}: {visual} / {intents}",
                      f"{per['crr']:.1f}" if applied and per.get("crr") is not None else "",
                      f"{per['ar']:.1f}" if per.get("ar") is not None else "",
                      f"{steps[i]['unlearn_seconds']:.1f}" if applied else "")
    console.print(table)
    for i, request in enumerate(results["requests"]):
        concepts = request.get("concepts")
        if concepts:
            console.print(f"[bold]{request['name']}[/] concepts ({concepts.get('source', '?')}): "
                          f"visual: {'; '.join(concepts['visual']) or '-'} | textual: {'; '.join(concepts['textual']) or '-'}")
    if results.get("summary"):
        console.print(summary_table({results["method"]: results}))
    if focus is not None:
        history = Table(title=f"{focus} after each step", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("step", "applied", "CRR", "AR"):
            history.add_column(column, justify="right")
        for i, step in enumerate(steps):
            per = step.get("per_request", {}).get(focus, {})
            crr, ar = per.get("crr"), per.get("ar")
            history.add_row(str(i + 1), names[i], "" if crr is None else f"{crr:.1f}", "" if ar is None else f"{ar:.1f}")
        console.print(history)


@app.command()
@user_errors
def pretrain(out: Path = typer.Option(..., help="folder to write the model into"),
             seed: int = typer.Option(0, help="seed"),
             config: Optional[Path] = typer.Option(None, help="JSON/YAML file of pretraining settings "
                                                   "(vision_steps, language_steps, batch_size, lr, n_train, ...)")):
    """Reproduce the built-in model from the benchmark's general data."""
    import inspect as signature

    from vlforget.models.tiny import pretrain as train

    valid = [p for p in signature.signature(train).parameters if p not in ("out_dir", "seed", "log", "config_kwargs")]
    train(out, seed=seed, **_command_settings(config, valid))


def main() -> None:  # pragma: no cover
    sys.exit(app())
