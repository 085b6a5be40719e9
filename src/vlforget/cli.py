"""The `vlforget` command.

Errors a user can make (missing file, unknown method, bad config, a file the system
cannot read or write) print one clear line and exit with code 2, never a traceback.
Text that comes from users or models (request names, descriptions, answers, paths) is
printed escaped, never read as console markup.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from vlforget.configs import did_you_mean

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Continual unlearning for vision-language models.")
console = Console()
err = Console(stderr=True)

DEFAULT_METHOD = "core"
MAX_INSTRUCTION = 2000  # characters of a `chat` instruction


def user_errors(fn):
    """Turn the errors a user can cause into one line and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, KeyError, OSError) as error:
            err.print(f"[bold red]error:[/] {escape(one_line(error))}", soft_wrap=True, highlight=False)
            raise typer.Exit(2)
    return wrapper


def one_line(error: BaseException) -> str:
    """The user-facing message of `error`, on one line (an OSError names its file)."""
    if isinstance(error, OSError) and error.strerror:  # raised by the system: "Permission denied: path"
        message = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        message = str(error.args[0] if error.args else error)
    return " ".join(message.split())


def check_cli_numbers(limit: Optional[int] = None, seed: Optional[int] = None, step: Optional[int] = None) -> None:
    """The numeric options' ranges (typer checks only that they are integers)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1 (the number of requests to run), got {limit}")
    if seed is not None and not 0 <= seed < 2**31:
        raise ValueError(f"--seed must be in 0..{2**31 - 1}, got {seed}")
    if step is not None and step < 0:
        raise ValueError(f"--step must be >= 0 (0 = the base model), got {step}")


VERSION_HELP = ("built-in benchmark version: 2 (request/evaluation phrasings, pressure view) or 1 "
                "(reproduces v1 results bit for bit, with the v1 built-in model)")


def _benchmark(seed: int, tasks: Optional[Path], paraphrases: Optional[Path],
               dataset: Optional[str] = None, data: Optional[Path] = None, data_options: Optional[dict] = None,
               utility: Optional[Path] = None, utility_limit: Optional[int] = None, version: int = 2,
               sequence: str = "test"):
    if utility is not None:  # S from a general benchmark file instead of the sequence's own split
        from vlforget.data.utility import WithUtility, load_utility

        samples = load_utility(utility, utility_limit)
        return WithUtility(_benchmark(seed, tasks, paraphrases, dataset, data, data_options, version=version,
                                      sequence=sequence), samples, utility)
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig

    if dataset or data:
        if not (dataset and data):
            raise ValueError("--dataset FORMAT and --data PATH go together")
        from vlforget.data.loaders.sequence import LoadedSequence

        return LoadedSequence(dataset, data, data_options)
    if data_options:
        raise ValueError("loader options (--data-config or a 'dataset:' block) need --dataset and --data")

    from vlforget.configs import build_config

    return Benchmark(build_config(BenchmarkConfig, {"seed": seed, "requests_file": str(tasks) if tasks else None,
                                                    "paraphrases_file": str(paraphrases) if paraphrases else None,
                                                    "version": version, "sequence": sequence},
                                  where="the benchmark options"))


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
    """A --config file's mapping without its `dataset:` block (loader options, see `_data_options`)."""
    from vlforget.configs import read_mapping

    settings = read_mapping(config) if config else {}
    settings.pop(DATASET_BLOCK, None)
    return settings


UTILITY_HELP = ("S from a general benchmark: an MMBench-style .tsv, a ScienceQA-style problems .json or a "
                "LLaVA-style .json of multiple-choice questions (accuracy relative to the zero-shot model)")
UTILITY_LIMIT_HELP = "with --utility: only its first N questions"
DATASET_BLOCK = "dataset"
DATA_CONFIG_HELP = "with --dataset: JSON/YAML file of the loader's options (see docs/loaders.md)"


def _data_options(data_config: Optional[Path], config: Optional[Path]) -> dict:
    """Loader options: a --config file's `dataset:` block, then a --data-config file's keys on top.
    Checked against the loader when it runs (`loaders.check_options`)."""
    from vlforget.configs import read_mapping

    options: dict = {}
    for path, block in ((config, True), (data_config, False)):
        if path is None:
            continue
        mapping = read_mapping(path)
        part = mapping.get(DATASET_BLOCK, {}) if block else mapping
        if not isinstance(part, dict):
            raise ValueError(f"{path}: '{DATASET_BLOCK}' should map loader option names to values, "
                             f"got {type(part).__name__}")
        options.update(part)
    return options


def _command_settings(config: Optional[Path], valid: list[str]) -> dict:
    """A command's own options from a --config file; an unknown key names the nearest valid one."""
    settings = _overrides(config)
    for key in settings:
        if key not in valid:
            raise ValueError(f"unknown key {key!r} in {config}"
                             + (did_you_mean(key, valid) or f"; valid keys: {', '.join(valid)}"))
    return settings


JUDGE_HELP = "refusal judge: minilm, lexical, or core (CORE's CRR rule: its refusal patterns, then the nearest refusal)"
CORE_REPO_HELP = ("your copy of CORE's repository (github Jin0316/CORE): with --dataset core its refusal sentences "
                  "and prompt pools, with --judge core its refusal patterns; never copied")


def _judge(name: str, core_repo: Optional[Path] = None):
    from vlforget.evaluation.judge import make_judge

    return make_judge(name, core_repo=core_repo) if name == "core" else make_judge(name)


def _protocol_defaults(method: str, benchmark) -> dict:
    """Method settings the loaded protocol fixes (e.g. CORE's forget-only training), for the
    fields this method has; the user's own overrides come after and win."""
    import dataclasses

    from vlforget.methods import method_class

    fields = {f.name for f in dataclasses.fields(method_class(method).config_class)}
    return {k: v for k, v in getattr(benchmark, "method_defaults", {}).items() if k in fields}


def _with_core_repo(dataset: Optional[str], options: dict, core_repo: Optional[Path]) -> dict:
    """--core-repo also gives `--dataset core` CORE's own sentences (unless the options name a repo)."""
    if core_repo is not None and dataset == "core" and "core_repo" not in options:
        return {**options, "core_repo": str(core_repo)}
    return options


def summary_table(runs: dict[str, dict], title: str = "Summary (percent)") -> Group:
    """Compact terminal tables: one row per method, each metric as "avg/last" so each fits 80
    columns; the headline metrics, then refusal quality (clean refusal) under them."""
    from rich import box

    from vlforget.evaluation.report import LABELS, SUMMARY_KEYS, WORDING_KEYS, summary_rows

    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                  caption="each cell: mean over steps / after the last request; s/req: median seconds per request")
    wording = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)  # docs/metrics.md says what it is
    for part, keys in ((table, SUMMARY_KEYS), (wording, WORDING_KEYS)):
        part.add_column("method", no_wrap=True)
        for key in keys:
            part.add_column(LABELS[key] if key != "overrefusal" else "OverRef", justify="right", no_wrap=True)
        if part is table:
            part.add_column("s/req", justify="right", no_wrap=True)
        for row in summary_rows(runs, keys):
            pairs = [f"{row[1 + 2 * i]}/{row[2 + 2 * i]}" for i in range(len(keys))]
            part.add_row(escape(row[0]), *pairs, *([row[-1]] if part is table else []))
    return Group(table, wording)


def _finish(runs: dict[str, dict], dirs: dict[str, Path], out: Path, title: str = "Summary") -> None:
    from vlforget.evaluation.report import write_report
    from vlforget.methods.training import is_main_process

    if not is_main_process():  # under `accelerate launch`, one process prints and writes the report
        return

    console.print(summary_table(runs, f"{title} (percent)"))
    report = write_report(runs, dirs, out, title=f"vlforget {title.lower()}: {', '.join(runs)}")
    console.print(f"results: {out / 'results.json' if len(runs) == 1 else out}", markup=False)
    console.print(f"report:  {report}", markup=False)


def run_one(method: str, out: Path, model: Optional[str], config: Optional[Path], tasks: Optional[Path],
            seed: int, paraphrases: Optional[Path], limit: Optional[int], judge_name: str,
            dataset: Optional[str] = None, data: Optional[Path] = None, overrides: Optional[dict] = None,
            placement: tuple = ("cpu", None), data_options: Optional[dict] = None, benchmark=None,
            core_repo: Optional[Path] = None, utility: Optional[Path] = None,
            utility_limit: Optional[int] = None, version: int = 2, sequence: str = "test",
            quiet: bool = False, with_views: bool = True, evaluate: str = "every") -> dict:
    from vlforget.configs import build_config
    from vlforget.evaluation.runner import ContinualRun, folder_lock, prepare_out_dir
    from vlforget.methods import method_class

    check_cli_numbers(limit=limit, seed=seed)
    from_file = _overrides(config)
    # Checked here, before the model loads, so an error names the file and the field.
    build_config(method_class(method).config_class, {**(overrides or {}), **from_file},
                 where=str(config) if config else f"{method} config")
    benchmark = benchmark or _benchmark(seed, tasks, paraphrases, dataset, data, data_options, utility, utility_limit,
                                        version, sequence)
    overrides = {"seed": seed, **_protocol_defaults(method, benchmark), **(overrides or {}), **from_file}
    judge = _judge(judge_name, core_repo)
    prepare_out_dir(out)
    with folder_lock(out):  # before the model loads: a second run on this folder stops at once
        return _run_locked(ContinualRun(method, benchmark, out, _backbone_loader(model, placement, version), overrides,
                                        judge, limit, with_views=with_views, evaluate=evaluate), method, quiet)


def _run_locked(run, method: str, quiet: bool = False) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vlforget.evaluation.report import fmt
    from vlforget.methods.training import is_main_process

    if not is_main_process() or quiet:
        return run.run(lock=False)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(method, total=len(run.requests))

        def progress(event, info):
            if event == "start":
                bar.update(task, completed=info["done"])
            elif event in ("unlearn", "evaluate"):
                bar.update(task, description=escape(f"{method}: {event} {info['step']:02d} {info['request']}"))
            elif event == "step":
                bar.update(task, advance=1)
                bar.console.print(f"  {info['step']:02d} {info['request'][:24]:<24} CRR {fmt(info['crr'], 5)} "
                                  f"AR {fmt(info['ar'], 5)} S {fmt(info['s'], 5)} dRR {fmt(info['drr'], 5)} "
                                  f"{info['unlearn_seconds']:5.1f}s", no_wrap=True, markup=False, highlight=False)
        run.progress = progress
        return run.run(lock=False)


@app.command()
@user_errors
def methods(verbose: bool = typer.Option(False, "--verbose", "-v", help="also list every config field"),
            config: Optional[Path] = typer.Option(None, help="JSON/YAML file: method name -> its config overrides "
                                                  "(as `compare --config`): check it and show the effective "
                                                  "config of each method it names (* = set by the file)"),
            names: bool = typer.Option(False, "--names", help="only the names, one per line (for scripts)")):
    """List the registered unlearning methods (or check a config file against them)."""
    from vlforget.configs import build_config, config_help
    from vlforget.evaluation.report import reads_text
    from vlforget.methods import available_methods, method_class

    if names:
        print("\n".join(available_methods()))
        return
    per_method = _overrides(config)
    for name, overrides in per_method.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"{config}: {name!r} should map to that method's config overrides "
                             f"(method name -> {{field: value}}), got {type(overrides).__name__}")
        build_config(method_class(name).config_class, overrides, where=f"{config} ({name})")
    listed = {name: method_class(name) for name in per_method} if config else available_methods()
    for name, cls in listed.items():
        console.print(f"[bold]{escape(f'{name:<14}')}[/] {escape(cls.description)}")
        console.print(f"   reads: {reads_text(cls.reads)}", highlight=False, markup=False)
        if verbose or config:
            overrides = per_method.get(name, {})
            for field, default, text in config_help(cls.config_class):
                value, mark = (overrides[field], "*") if field in overrides else (default, " ")
                console.print(f"   {mark}{field} = {value!r}: {text}", highlight=False, markup=False)


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
        judge: str = typer.Option("minilm", help=JUDGE_HELP),
        dataset: Optional[str] = typer.Option(None, help="load a published benchmark instead: core, safeeraser, "
                                              "mllmu, clear, fiubench, llava_json, jsonl, parquet"),
        data: Optional[Path] = typer.Option(None, help="with --dataset: the folder or file holding it"),
        data_config: Optional[Path] = typer.Option(None, help=DATA_CONFIG_HELP),
        core_repo: Optional[Path] = typer.Option(None, help=CORE_REPO_HELP),
        utility: Optional[Path] = typer.Option(None, help=UTILITY_HELP),
        utility_limit: Optional[int] = typer.Option(None, help=UTILITY_LIMIT_HELP),
        device: str = typer.Option("auto", help=DEVICE_HELP),
        dtype: str = typer.Option("auto", help=DTYPE_HELP),
        benchmark_version: int = typer.Option(2, help=VERSION_HELP),
        sequence: str = typer.Option("test", help="built-in benchmark v2: test (the 16 requests, for reporting) or "
                                     "validation (the 8 requests every setting is chosen on)")):
    """Run one method over the request sequence (resumes an interrupted run in --out)."""
    if sequence not in ("test", "validation"):
        raise ValueError(f"--sequence must be test or validation, got {sequence!r}")
    if sequence == "validation" and (benchmark_version != 2 or tasks or dataset):
        raise ValueError("--sequence validation is the built-in benchmark v2's (no --tasks, --dataset, "
                                 "or --benchmark-version 1)")
    placement = _placement(device, dtype)
    options = _with_core_repo(dataset, _data_options(data_config, config), core_repo)
    results = run_one(method, out, model, config, tasks, seed, paraphrases, limit, judge, dataset, data,
                      placement=placement, data_options=options, core_repo=core_repo, utility=utility,
                      utility_limit=utility_limit, version=benchmark_version, sequence=sequence)
    _finish({method: results}, {method: out}, out)


@app.command()
@user_errors
def compare(methods: str = typer.Option(..., help="comma-separated method names"),
            out: Path = typer.Option(..., help="folder; each method runs in OUT/<method>"),
            model: Optional[str] = typer.Option(None, help="backbone checkpoint folder"),
            tasks: Optional[Path] = typer.Option(None, help="JSON/YAML request sequence"),
            seed: int = typer.Option(0, help="seed"),
            limit: Optional[int] = typer.Option(None, help="only the first N requests"),
            judge: str = typer.Option("minilm", help=JUDGE_HELP),
            config: Optional[Path] = typer.Option(None, help="JSON/YAML file: method name -> its config overrides "
                                                  "(and an optional 'dataset:' block of loader options)"),
            dataset: Optional[str] = typer.Option(None, help="load a published benchmark instead (as in `run`)"),
            data: Optional[Path] = typer.Option(None, help="with --dataset: the folder or file holding it"),
            data_config: Optional[Path] = typer.Option(None, help=DATA_CONFIG_HELP),
            core_repo: Optional[Path] = typer.Option(None, help=CORE_REPO_HELP),
            utility: Optional[Path] = typer.Option(None, help=UTILITY_HELP),
            utility_limit: Optional[int] = typer.Option(None, help=UTILITY_LIMIT_HELP),
            device: str = typer.Option("auto", help=DEVICE_HELP),
            dtype: str = typer.Option("auto", help=DTYPE_HELP),
            attacks: Optional[str] = typer.Option(None, help="then attack every method's last state with these "
                                                  "attacks ('all' or comma-separated, see `vlforget attack`) and "
                                                  "write OUT/robustness.md"),
            attack_config: Optional[Path] = typer.Option(None, help="with --attacks: JSON/YAML attack settings"),
            benchmark_version: int = typer.Option(2, help=VERSION_HELP),
            tuned: Path = typer.Option(Path("results/tuned"), help="tuning records (`vlforget tune`): a method "
                                       "with one runs at its chosen settings, under --config's overrides"),
            defaults: bool = typer.Option(False, "--defaults", help="ignore tuning records: every method at its "
                                          "defaults (plus --config)")):
    """Run several methods on the same sequence and print one side-by-side table."""
    from vlforget.configs import build_config
    from vlforget.data.benchmark import BENCHMARK_VERSIONS
    from vlforget.evaluation.tuning import method_identity, tuned_overrides
    from vlforget.methods import method_class
    from vlforget.models.checkpoints import builtin_path
    from vlforget.models.identity import checkpoint_fingerprint

    check_cli_numbers(limit=limit, seed=seed)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ValueError("--methods needs at least one method name")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods names a method twice: {methods}")
    attack_names = _attack_names(attacks, attack_config)  # fail on a typo before hours of running
    per_method = _overrides(config)
    for key, fields in per_method.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{config}: {key!r} should map to that method's config overrides "
                             f"(method name -> {{field: value}}), got {type(fields).__name__}")
        if key not in names:
            raise ValueError(f"{config}: {key!r} is not one of --methods" + did_you_mean(key, names))
    settings, notes = {}, []
    # Tuning runs on the built-in model: with it, a record must also be of today's weights.
    model_id = checkpoint_fingerprint(builtin_path(benchmark_version)) if model is None else None
    for name in names:
        cls = method_class(name)  # fail fast on a typo, before hours of running
        chosen, note = (None, f"{name}: defaults (--defaults)") if defaults else tuned_overrides(
            tuned, name, BENCHMARK_VERSIONS.get(benchmark_version, ""),
            identity=lambda overrides, cls=cls: method_identity(cls, overrides, model_id))
        settings[name] = {**(chosen or {}), **(per_method.get(name) or {})}
        notes.append(note + (f"; --config sets {json.dumps(per_method[name], sort_keys=True)}"
                             if per_method.get(name) else ""))
        build_config(cls.config_class, settings[name], where=f"{config} ({name})")
    for note in notes:
        console.print(f"[dim]{escape(note)}[/]", highlight=False)
    data_options = _with_core_repo(dataset, _data_options(data_config, config), core_repo)
    # loaded once, shared by every method's run; a bad folder or option fails before any run
    benchmark = _benchmark(seed, tasks, None, dataset, data, data_options, utility, utility_limit, benchmark_version)
    placement = _placement(device, dtype)
    runs = {name: run_one(name, out / name, model, None, tasks, seed, None, limit, judge,
                          overrides=settings[name], placement=placement, benchmark=benchmark,
                          core_repo=core_repo, version=benchmark_version)
            for name in names}
    from vlforget.methods.training import is_main_process

    if attack_names and is_main_process():  # before the report, so it shows every run's attacks table
        _robustness(names, out, attack_names, attack_config, model, device, dataset, data)
    _finish(runs, {name: out / name for name in names}, out, "Comparison")
    from vlforget.evaluation.report import markdown_summary, mode_markdown

    if is_main_process():
        settings_note = "\n".join(f"- {note}" for note in notes)
        (out / "comparison.md").write_text(markdown_summary(runs) + mode_markdown(runs)
                                           + "\nSettings:\n\n" + settings_note + "\n")
        console.print(f"table: {out / 'comparison.md'}")


def _attack_names(attacks: Optional[str], attack_config: Optional[Path]) -> list[str]:
    if attacks is None:
        if attack_config is not None:
            raise ValueError("--attack-config needs --attacks")
        return []
    from vlforget.configs import build_config
    from vlforget.evaluation.attacks.runner import parse_attack_names
    from vlforget.evaluation.attacks.target import AttackConfig

    build_config(AttackConfig, _overrides(attack_config), where=f"{attack_config}")
    return parse_attack_names(attacks)


def _robustness(names: list[str], out: Path, attack_names: list[str], attack_config: Optional[Path],
                model: Optional[str], device: str, dataset: Optional[str] = None, data: Optional[Path] = None) -> None:
    """Attack each method's last state (attacks already saved for that step are reused) and write OUT/robustness.md."""
    from vlforget.configs import build_config, to_dict
    from vlforget.evaluation.attacks.runner import run_attacks
    from vlforget.evaluation.attacks.tables import read_attacks, robustness_markdown, robustness_row
    from vlforget.evaluation.attacks.target import AttackConfig, load_target

    settings = build_config(AttackConfig, _overrides(attack_config), where=f"{attack_config}")
    rows = []
    for name in names:
        run_dir = out / name
        saved = read_attacks(run_dir)
        done = len(json.loads((run_dir / "results.json").read_text())["steps"])
        todo = [a for a in attack_names if not (a in saved and saved[a]["step"] == done
                                                and saved[a]["config"] == to_dict(settings))]
        if todo:
            target = load_target(run_dir, None, settings, model, dataset, data, placement=_placement(device, "auto"))
            run_attacks(target, todo, progress=lambda a, n=name: err.print(f"[dim]attack: {n} {a}[/]", highlight=False))
            _refresh_report(run_dir)
        rows.append(robustness_row(name, read_attacks(run_dir)))
    (out / "robustness.md").write_text(robustness_markdown(rows))
    console.print(f"robustness: {out / 'robustness.md'}")


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
    from vlforget.evaluation.tuning import RULE, method_identity
    from vlforget.evaluation.tuning import tune as run_tuning
    from vlforget.methods import method_class
    from vlforget.methods.tuning_grids import grid_for
    from vlforget.models.checkpoints import builtin_path
    from vlforget.models.identity import checkpoint_fingerprint

    cls = method_class(method)
    grid = grid_for(method)
    placement = _placement(device, dtype)
    n_requests = len(_benchmark(seed, None, None, version=2, sequence="validation").specs)
    # Points tuned on another built-in model do not count either (it is retrained at times).
    model_fingerprint = checkpoint_fingerprint(builtin_path(2))

    def run_point(overrides: dict, folder: Path) -> dict:
        return run_one(method, folder, None, None, None, seed, None, limit, judge, overrides=overrides,
                       placement=placement, version=2, sequence="validation", quiet=True, with_views=False,
                       evaluate="last")  # the rule reads only the numbers after the last request

    console.print(f"tuning {method}: {len(grid)} grid points on the validation sequence; rule: {RULE}",
                  highlight=False)
    record = run_tuning(method, grid, run_point, out, work / method, BENCHMARK_VERSIONS[2], seed, cls.refuses,
                        min(limit or n_requests, n_requests), log=lambda m: console.print(m, highlight=False),
                        identity=lambda overrides: method_identity(cls, overrides, model_fingerprint))
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
                                                    "(e.g. n_general_test), or a 'dataset:' block with --dataset"),
              dataset: Optional[str] = typer.Option(None, help="evaluate on a published benchmark's retain test "
                                                    "pairs instead (formats as in `run`)"),
              data: Optional[Path] = typer.Option(None, help="with --dataset: the folder or file holding it"),
              data_config: Optional[Path] = typer.Option(None, help=DATA_CONFIG_HELP),
              device: str = typer.Option("auto", help=DEVICE_HELP),
              dtype: str = typer.Option("auto", help=DTYPE_HELP),
              benchmark_version: int = typer.Option(2, help=VERSION_HELP)):
    """Per-intent exact match and refusal rates of a model on the held-out general split
    (with --dataset: on the pairs every request must keep answering).

    Benchmark v2: the top-level numbers are on evaluation phrasings (what users ask);
    `phrasings` holds the same report for each phrasing group and the pressure view."""
    from vlforget.configs import build_config
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig
    from vlforget.evaluation.report import fmt
    from vlforget.models.evaluate import base_eval as evaluate
    from vlforget.models.evaluate import base_eval_views

    check_cli_numbers(seed=seed)
    if dataset or data:
        loaded = _benchmark(seed, None, None, dataset, data, _data_options(data_config, config))
        samples = [s for r in loaded.requests() for s in r.retain_test] + loaded.utility_split()
        if not samples:
            raise ValueError(f"{data}: the {dataset} data has no retain test pairs to evaluate on")
        report = evaluate(_backbone_loader(model, _placement(device, dtype))(), samples)
    else:
        bench = Benchmark(build_config(BenchmarkConfig, {"seed": seed, "version": benchmark_version,
                                                         **_overrides(config)},
                                       where=str(config) if config else "the benchmark options"))
        report = base_eval_views(_backbone_loader(model, _placement(device, dtype), bench.config.version)(), bench)
    if as_json:
        print(json.dumps(report, indent=1))
        return
    table = Table(title="Base model on " + (f"{dataset} retain pairs" if dataset else "the held-out general split"))
    table.add_column("key")
    table.add_column("value", justify="right")
    for key, value in _flatten(report):
        table.add_row(escape(key), str(value) if isinstance(value, int) else fmt(value))
    console.print(table)


def _flatten(report: dict, prefix: str = ""):
    """(dotted key, value) for every leaf of a nested report."""
    for key, value in report.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _load_image(path: Path):
    """An image file as RGB; a missing, undecodable or oversized file is one error naming it."""
    from vlforget.data.images import open_rgb

    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"--image {path} is not a file")
    return open_rgb(path, str(path))


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
    check_cli_numbers(step=step)
    if not instruction.strip():
        raise ValueError("the instruction is empty")
    if len(instruction) > MAX_INSTRUCTION:
        raise ValueError(f"the instruction is {len(instruction)} characters long; at most {MAX_INSTRUCTION} "
                         "are accepted")
    picture = _load_image(image)
    if config is not None and state is None:
        raise ValueError("--config needs --state (it overrides the run's method config)")
    placement = _placement(device, dtype)
    if state is None:
        from vlforget.models.backbone import Backbone

        answer = Backbone.load(model, *placement).generate([picture], [instruction])[0]
        console.print(f"[dim](base model)[/] {escape(answer)}", highlight=False)
        return
    from vlforget.evaluation.run_state import load_run_state

    method, results = load_run_state(state, step, model, _overrides(config), placement)
    applied = ", ".join(method.applied) or "none"
    console.print(f"[dim]({escape(results['method'])}, requests applied: {escape(applied)})[/]", highlight=False)
    console.print(method.generate([picture], [instruction])[0], markup=False, highlight=False)


def _scope_text(scope: dict) -> str:
    """"mode: visual / intents" for the built-in scopes; loaded data names keywords instead."""
    visual = scope.get("visual") or {}
    visual = ",".join(f"{k}={v}" for k, v in visual.items()) if isinstance(visual, dict) else ",".join(map(str, visual))
    intents = ",".join(scope.get("intents") or scope.get("keywords") or [])
    return f"{scope.get('mode', '?')}: {visual or '-'} / {intents or '-'}"


@app.command()
@user_errors
def inspect(run_dir: Path = typer.Argument(..., help="a run folder written by `vlforget run`"),
            request: Optional[str] = typer.Option(None, help="also show this request's CRR and AR after every step "
                                                  "(does its refusal hold?)"),
            config: Optional[Path] = typer.Option(None, help="JSON/YAML file of this command's options (request)")):
    """Which requests a run applied, their scopes, and their measured verification numbers."""
    from vlforget.evaluation.report import fmt
    from vlforget.evaluation.runner import RESULTS_FILE

    focus = _command_settings(config, ["request"]).get("request", request)  # the loops below reuse `request`
    path = run_dir / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no run in {run_dir} (missing {RESULTS_FILE})")
    from vlforget.evaluation.runner import read_results

    results = read_results(path)
    steps = results["steps"]
    names = [r["name"] for r in results["requests"]]
    if focus is not None and focus not in names:
        raise ValueError(f"no request {focus!r} in this run"
                         + (did_you_mean(focus, names) or f"; it has: {', '.join(names)}"))
    last = steps[-1] if steps else {}
    console.print(f"[bold]{escape(str(results['method']))}[/]  benchmark {escape(str(results['benchmark_version']))}  "
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
        table.add_row(str(i + 1) if applied else "-", escape(request["name"]),
                      escape(_scope_text(request.get("scope") or {})),
                      fmt(per.get("crr")) if applied else "",
                      fmt(per.get("ar")) if per else "",
                      f"{steps[i]['unlearn_seconds']:.1f}" if applied else "")
    console.print(table)
    for i, request in enumerate(results["requests"]):
        concepts = request.get("concepts")
        if concepts:
            console.print(f"[bold]{escape(request['name'])}[/] " + escape(
                f"concepts ({concepts.get('source', '?')}): visual: {'; '.join(concepts['visual']) or '-'} | "
                f"textual: {'; '.join(concepts['textual']) or '-'}"), highlight=False)
    if results.get("summary"):
        console.print(summary_table({results["method"]: results}))
    from vlforget.evaluation.report import MODE_COLUMNS, mode_rows

    if mode_rows(results):
        modes = Table(title="By mode after the last request (HH/HU/UH refused, UU answered)", box=box.SIMPLE_HEAD,
                      pad_edge=False)
        for column in ["mode"] + [label for _, label in MODE_COLUMNS]:
            modes.add_column(column, justify="right")
        for row in mode_rows(results):
            modes.add_row(*row)
        console.print(modes)
    if focus is not None:
        history = Table(title=escape(f"{focus} after each step"), box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("step", "applied", "CRR", "AR"):
            history.add_column(column, justify="right")
        for i, step in enumerate(steps):
            per = step.get("per_request", {}).get(focus, {})
            crr, ar = per.get("crr"), per.get("ar")
            history.add_row(str(i + 1), escape(names[i]), fmt(crr), fmt(ar))
        console.print(history)


@app.command()
@user_errors
def rescore(run_dir: Path = typer.Argument(..., help="a run folder written by `vlforget run`"),
            judge: str = typer.Option(..., help="the judge to score the kept responses with: " + JUDGE_HELP[15:]),
            core_repo: Optional[Path] = typer.Option(None, help=CORE_REPO_HELP)):
    """Recompute a run's metrics with another judge from its kept responses (no model needed)."""
    from vlforget.evaluation.rescore import rescore as recompute
    from vlforget.evaluation.report import write_report

    results, out = recompute(run_dir, _judge(judge, core_repo), judge)
    name = f"{results['method']} ({judge})"
    console.print(summary_table({name: results}, f"Re-scored with {judge} (percent)"))
    report = write_report({name: results}, {name: run_dir}, out, title=f"vlforget rescore: {name}")
    console.print(f"results: {out / 'results.json'}")
    console.print(f"report:  {report}")


@app.command()
@user_errors
def pretrain(out: Path = typer.Option(..., help="folder to write the model into"),
             seed: int = typer.Option(0, help="seed"),
             config: Optional[Path] = typer.Option(None, help="JSON/YAML file of pretraining settings "
                                                   "(vision_steps, language_steps, batch_size, lr, n_train, ...)")):
    """Reproduce the built-in model from the benchmark's general data."""
    import inspect as signature

    from vlforget.models.tiny import pretrain as train

    import typing

    from vlforget.configs import check_value

    check_cli_numbers(seed=seed)
    valid = [p for p in signature.signature(train).parameters if p not in ("out_dir", "seed", "log", "config_kwargs")]
    hints = typing.get_type_hints(train)
    settings = {key: check_value(value, hints.get(key, typing.Any), f"{config}: field {key!r}", {"ge": 0})
                for key, value in _command_settings(config, valid).items()}
    train(out, seed=seed, **settings)


@app.command()
@user_errors
def serve(data_dir: Path = typer.Option(Path("vlforget-data"), help="uploads, method states and the SQLite ledger"),
          database_url: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the ledger, e.g. "
                                                     "postgresql+psycopg://user@host/db (default: SQLite in --data-dir)"),
          method: str = typer.Option(DEFAULT_METHOD, help="registered method applying the requests"),
          config: Optional[Path] = typer.Option(None, help="JSON/YAML file of the method's config overrides"),
          model: Optional[str] = typer.Option(None, help="backbone checkpoint folder (default: the built-in model)"),
          host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(8000, help="port to listen on"),
          create_token: Optional[str] = typer.Option(None, "--create-token", metavar="NAME",
                                                     help="create an API token named NAME, print it once, exit")):
    """Serve the model: deletion requests in (applied in order, verified, ledgered), chat out."""
    from vlforget.serving.settings import ServiceSettings

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from vlforget.configs import build_config
    from vlforget.methods.base import method_class

    overrides = _overrides(config)
    # an unknown method, config field or malformed URL fails here, in one line, not in the worker
    build_config(method_class(method).config_class, overrides, where=f"{method} config")
    if database_url:
        try:
            make_url(database_url)
        except ArgumentError as error:
            raise ValueError(f"--database-url: {error}") from None
    settings = ServiceSettings(data_dir=data_dir, database_url=database_url, method=method,
                               method_overrides=overrides, model=model)
    if create_token is not None:
        from vlforget.serving.tokens import create_token as make

        print(make(settings, create_token))
        return
    import uvicorn

    from vlforget.serving.app import create_app

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command()
@user_errors
def attack(run_dir: Path = typer.Argument(..., help="a run folder written by `vlforget run` (or OUT/<method> of compare)"),
           step: Optional[int] = typer.Option(None, help="attack the state after this step (default: the last)"),
           attack: Optional[str] = typer.Option(None, "--attack", help="comma-separated attacks (default: all): "
                                                "perturbations, pgd, relearning, quantisation, membership, crossmodal"),
           config: Optional[Path] = typer.Option(None, help="JSON/YAML file of attack settings (pairs_per_request, "
                                                 "pgd_epsilon, relearn_steps, ...; see docs/metrics.md)"),
           model: Optional[str] = typer.Option(None, help="backbone checkpoint folder the run used"),
           dataset: Optional[str] = typer.Option(None, help="for a run on a loaded benchmark: its format"),
           data: Optional[Path] = typer.Option(None, help="with --dataset: the folder or file holding it"),
           device: str = typer.Option("cpu", help=DEVICE_HELP)):
    """Attack a saved state: does the forgetting hold? Writes RUN/attacks/<name>.json and the report's table."""
    from vlforget.configs import build_config
    from vlforget.evaluation.attacks.runner import parse_attack_names, run_attacks
    from vlforget.evaluation.attacks.tables import show
    from vlforget.evaluation.attacks.target import AttackConfig, load_target

    names = parse_attack_names(attack)  # fail on a typo before loading anything
    settings = build_config(AttackConfig, _overrides(config), where=f"{config}")
    target = load_target(run_dir, step, settings, model, dataset, data, _placement(device, "auto"))
    records = run_attacks(target, names, progress=lambda name: err.print(f"[dim]attack: {name}[/]", highlight=False))
    from rich import box

    table = Table(title=f"Attacks on {target.results['method']} after step {target.step}", box=box.SIMPLE_HEAD)
    table.add_column("attack", no_wrap=True)
    table.add_column("numbers")
    for name, record in records.items():
        table.add_row(name, "; ".join(f"{k}: {show(v)}" for k, v in record["headline"].items()))
    console.print(table)
    _refresh_report(run_dir)
    console.print(f"attack results: {run_dir / 'attacks'}")


def _refresh_report(run_dir: Path) -> None:
    """Rewrite the run's report so it carries the attacks table (the run's results are unchanged)."""
    from vlforget.evaluation.report import write_report
    from vlforget.evaluation.runner import RESULTS_FILE

    results = json.loads((run_dir / RESULTS_FILE).read_text())
    write_report({results["method"]: results}, {results["method"]: run_dir}, run_dir,
                 title=f"vlforget summary: {results['method']}")


def main() -> None:  # pragma: no cover
    sys.exit(app())
