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
    "ledger": {"torch", "timm", "numpy", "celery", "fastapi", "pydantic", "starlette", "api", "worker", "ltu_core", "ltu_cli", "httpx"},
    "worker": {"api", "fastapi", "ltu_cli", "ltu_client"},
    "ltu_client": {"torch", "timm", "api", "worker", "ledger", "ltu_core", "sqlalchemy", "fastapi"},
    "ltu_core": {"api", "worker", "ledger", "ltu_cli", "ltu_client", "fastapi", "celery", "sqlalchemy"},
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


def test_building_the_api_loads_no_science_and_no_broker():
    code = (
        "import sys\n"
        "from api.app import create_app\n"
        "from ledger.settings import Settings\n"
        "import tempfile, pathlib\n"
        "root = pathlib.Path(tempfile.mkdtemp())\n"
        "create_app(Settings(home=root, database_url=f'sqlite:///{root}/l.db', artifacts_dir=root / 'a', secret_key='s' * 40))\n"
        "import worker, worker.runner, worker.job\n"  # the embedded runner's modules are light too until a job runs
        "print(sorted(m for m in ('torch', 'timm', 'numpy', 'celery', 'ltu_core') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_nothing_is_built_at_import_time():
    code = (
        "import sys, worker.celery_app, api.app, ledger.db\n"
        "assert worker.celery_app._app is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
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
