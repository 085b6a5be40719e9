"""The layout rules of `docs/architecture.md`, checked so they are enforced, not remembered.

- one registered method per module, the module named after the method;
- no method module imports another method's module (shared code lives in modules
  named for what they hold);
- every registered method is in the test tables (`FAST` here, `SHORT` or `UNSPLIT`
  in the multi-process worker) and has its section in `docs/methods.md`, whose
  "Reads:" line says what the method declares it reads (`Method.reads`).
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

from vlforget.methods import available_methods

ROOT = Path(__file__).resolve().parents[1]
METHODS_DIR = ROOT / "src" / "vlforget" / "methods"
METHODS = available_methods()


def method_module(cls) -> str:
    """The method's own module: `vlforget.methods.x` for a file, `vlforget.methods.x` for a package."""
    parts = cls.__module__.split(".")
    return ".".join(parts[:3])


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_one_registered_method_per_module_named_after_it():
    owners: dict[str, list[str]] = {}
    for name, cls in METHODS.items():
        owners.setdefault(method_module(cls), []).append(name)
    crowded = {module: names for module, names in owners.items() if len(names) > 1}
    assert not crowded, f"modules holding several registered methods: {crowded}"
    misnamed = {name: method_module(cls) for name, cls in METHODS.items()
                if method_module(cls) != f"vlforget.methods.{name}"}
    assert not misnamed, f"method modules not named after their method: {misnamed}"


def test_no_method_imports_another_methods_module():
    own = {name: method_module(cls) for name, cls in METHODS.items()}
    offenders = []
    for name, module in own.items():
        path = METHODS_DIR / module.split(".")[-1]
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        imported = set().union(*(imported_modules(f) for f in files))
        for other_name, other in own.items():
            if other_name != name and any(m == other or m.startswith(other + ".") for m in imported):
                offenders.append(f"{name} imports {other}")
    assert not offenders, offenders


def test_every_method_is_in_the_test_tables_and_the_docs():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        fast = importlib.import_module("test_methods").FAST
        tiny = importlib.import_module("test_methods").TINY
        worker = importlib.import_module("accelerate_methods_worker")
    finally:
        sys.path.remove(str(ROOT / "tests"))
    documented = set(re.findall(r"^## ([a-z0-9_]+): ", (ROOT / "docs" / "methods.md").read_text(), re.M))
    for name in METHODS:
        assert name in fast, f"{name} has no entry in FAST (tests/test_methods.py)"
        assert name in tiny, f"{name} has no entry in TINY (tests/test_methods.py: what it reads)"
        assert (name in worker.SHORT) != (name in worker.UNSPLIT), \
            f"{name} must be in exactly one of SHORT / UNSPLIT (tests/accelerate_methods_worker.py)"
        assert name in documented, f"{name} has no '## {name}: ...' section in docs/methods.md"
    stale = (set(fast) | set(tiny) | set(worker.SHORT) | set(worker.UNSPLIT)) - set(METHODS)
    assert not stale, f"test tables name unregistered methods: {sorted(stale)}"


@pytest.mark.parametrize("layer, forbidden", [
    ("models", ("vlforget.methods", "vlforget.evaluation", "vlforget.cli")),
    ("methods", ("vlforget.evaluation", "vlforget.cli")),
    ("data", ("vlforget.models", "vlforget.methods", "vlforget.evaluation", "vlforget.cli")),
])
def test_layers_import_only_downwards(layer, forbidden):
    bad = [f"{path.relative_to(ROOT)} imports {module}"
           for path in sorted((ROOT / "src" / "vlforget" / layer).rglob("*.py"))
           for module in imported_modules(path) if module.startswith(forbidden)]
    assert not bad, bad


# Methods get general pairs from the benchmark in use (`Method.general_pool`), never from
# the built-in world in `vlforget.data`: a method that read it would fit a loaded
# benchmark's probes on synthetic shapes. No method module reads it any more (CORE's
# scorer and concept mining were the last, issue 19); the test below fails when a listed
# file no longer imports vlforget.data, so the list cannot go stale.
STILL_READS_BUILTIN_WORLD: set[str] = set()


def _reads_data_layer(path: Path) -> bool:
    package = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts[:-1])
    modules = set(imported_modules(path))
    for node in ast.walk(ast.parse(path.read_text())):  # relative imports: `from ..data import x`
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            full = ".".join(p for p in (base, node.module) if p)
            modules |= {full, *(f"{full}.{alias.name}" for alias in node.names)}
    return any(m == "vlforget.data" or m.startswith("vlforget.data.") for m in modules)


def test_no_method_module_reads_the_built_in_world():
    source = ROOT / "src" / "vlforget"
    reading = {path.relative_to(source).as_posix() for path in sorted(METHODS_DIR.rglob("*.py"))
               if _reads_data_layer(path)}
    assert not reading - STILL_READS_BUILTIN_WORLD, \
        f"method modules import vlforget.data (use self.general_pool): {sorted(reading - STILL_READS_BUILTIN_WORLD)}"
    stale = STILL_READS_BUILTIN_WORLD - reading
    assert not stale, f"no longer import vlforget.data: remove them from STILL_READS_BUILTIN_WORLD: {sorted(stale)}"


WHAT = {"forget": "forget pairs", "retain": "retain pairs", "text": "request text", "general": "general pairs"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_docs_say_what_each_method_reads(name):
    reads = METHODS[name].reads
    if reads is None:
        pytest.skip(f"{name} does not declare `reads` yet (tests/test_methods.py checks who may not)")
    section = re.search(rf"^## {re.escape(name)}: .*\n(.*)\n", (ROOT / "docs" / "methods.md").read_text(), re.M)
    expected = "Reads: " + (", ".join(WHAT[r] for r in reads) if reads else "nothing") + "."
    assert section and section.group(1) == expected, f"docs/methods.md '## {name}:' must start with {expected!r}"
