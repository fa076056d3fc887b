"""The dependency arrows of ARCHITECTURE.md, checked on the source (every import statement) and
on a real import of the API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package → top-level modules it must never import (anywhere in its files, lazily or not)
FORBIDDEN = {
    "api": {"torch", "timm", "numpy", "celery", "kombu", "worker", "ltu_core", "ltu_cli"},
    "ledger": {
        "torch",
        "timm",
        "numpy",
        "celery",
        "fastapi",
        "pydantic",
        "starlette",
        "api",
        "worker",
        "ltu_core",
        "ltu_cli",
        "httpx",
    },
    "worker": {"api", "fastapi", "ltu_cli", "ltu_client"},
    "ltu_client": {"torch", "timm", "api", "worker", "ledger", "ltu_core", "ltu_settings", "sqlalchemy", "fastapi"},
    "ltu_core": {"api", "worker", "ledger", "ltu_cli", "ltu_client", "ltu_settings", "fastapi", "celery", "sqlalchemy"},
    # Configuration sits beside the ledger: pydantic-settings and ledger.errors (ConfigError), nothing above.
    "ltu_settings": {"api", "worker", "ltu_core", "ltu_cli", "torch", "fastapi", "celery", "sqlalchemy"},
    "migrations": {"api", "worker", "ltu_core", "torch", "fastapi", "celery"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package):
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_modules(path) & FORBIDDEN[package])
        for path in (REPO / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# The ledger is persistence only: beyond the standard library and itself it may import SQLAlchemy, and
# Alembic, SQLAlchemy's migration tool, which ledger.migrate drives, and `cryptography` for the one thing
# it stores encrypted (tenant keys, wrapped at rest: ledger.tenant_keys). Metrics, web and task libraries
# live at the edges that use them.
LEDGER_THIRD_PARTY = {"sqlalchemy", "alembic", "cryptography"}


def test_the_ledger_imports_only_the_standard_library_sqlalchemy_and_key_wrapping():
    allowed = set(sys.stdlib_module_names) | LEDGER_THIRD_PARTY | {"ledger"}
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_modules(path) - allowed)
        for path in (REPO / "ledger").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_building_the_api_loads_no_science_and_no_broker():
    code = (
        "import sys\n"
        "from api.app import create_app\n"
        "from ltu_settings import Settings\n"
        "import tempfile, pathlib\n"
        "root = pathlib.Path(tempfile.mkdtemp())\n"
        "create_app(Settings.build(home=root, secret_key='s' * 40))\n"
        "import worker, worker.runner, worker.job\n"  # the embedded runner's modules are light too until a job runs
        "print(sorted(m for m in ('torch', 'timm', 'numpy', 'celery', 'ltu_core') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_nothing_is_built_at_import_time():
    code = (
        "import sys, worker.celery_app, api.app, ledger.db, ltu_settings\n"
        "assert worker.celery_app._app is None\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_the_science_library_reads_no_environment_and_prints_nothing():
    # ltu_core reports through progress callbacks and takes its configuration as arguments.
    offenders = []
    for path in (REPO / "ltu_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: print")
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: os.{node.attr}")
    assert offenders == []


# --- imports among our own modules --------------------------------------------------------------

OUR_PACKAGES = ("api", "ledger", "worker", "ltu_core", "ltu_cli", "ltu_client", "ltu_settings")


def our_import_graph() -> dict[str, set[str]]:
    """Each module of ours → the modules of ours it imports anywhere in its file, lazily or not.

    `from pkg import name` counts as an import of the module pkg.name when there is one, else of pkg.
    """
    files = {}
    for package in OUR_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative: resolved against the module's own package
                    package = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    module = ".".join([*package, *([module] if module else [])])
                candidates = [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in files:  # a name inside a module → that module
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def test_our_modules_import_each_other_without_a_cycle():
    # Lazy imports count too: a cycle hidden inside a function still ties the two modules together.
    graph = our_import_graph()

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return seen

    cyclic = {module for module in graph if module in reachable(module)}
    assert {module: sorted(graph[module] & cyclic) for module in sorted(cyclic)} == {}
    assert "ltu_cli.common" in graph["ltu_cli.main"]  # the walk sees our imports


# The CLI is the service's composition root: it builds the API through api.app's factory and uses
# nothing else of api (`ltu certificate verify` verifies with ltu_client.certificates).
CLI_API_DOORS = {"api.app"}


def test_the_cli_reaches_the_api_only_through_its_app_factory():
    offenders = {
        module: sorted(t for t in targets if t.split(".")[0] == "api" and t not in CLI_API_DOORS)
        for module, targets in our_import_graph().items()
        if module.split(".")[0] == "ltu_cli"
    }
    assert {k: v for k, v in offenders.items() if v} == {}
