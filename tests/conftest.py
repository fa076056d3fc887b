"""Shared fixtures: tiny seeded data and a tiny trained model, built once per session; the service
fixtures: a tiny dataset archive and checkpoint, embedded apps on SQLite, and the real Postgres +
Redis + Celery stack (a fresh database per session, a worker subprocess on its own queue).

Under CI=true a missing Postgres or Redis fails the tests that need them; elsewhere they skip
with the reason (tests/support.py's `unavailable`).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import ADMIN_KEY, POSTGRES_ADMIN_URL, REDIS_DB, REDIS_HOST_URL, REPO, TINY_LTU, unavailable

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic():
    """160 seeded noisy 1×8×8 images in 4 classes (120 train, 40 test), hard enough to memorise, and 400
    holdout images: D_ref, and a few hundred D_audit controls, enough to audit a handful of subjects."""
    from ltu_core.data import make_synthetic

    return make_synthetic(num_samples=160, num_classes=4, image_size=8, noise=100.0, extra_holdout=400)


@pytest.fixture(scope="session")
def tiny_arch():
    """A 1/8-width ResNet-18 for 8 px inputs (~180k parameters: timm keeps a 64-channel stem)."""
    from ltu_core.models import ArchConfig

    return ArchConfig("resnet18", num_classes=4, in_chans=1, img_size=8, width=0.125)


@pytest.fixture(scope="session")
def tiny_recipe():
    """Enough epochs to memorise the train split (100 % train vs ~78 % test accuracy)."""
    from ltu_core.train import TrainRecipe

    return TrainRecipe(epochs=15, batch_size=32, lr=0.05)


@pytest.fixture(scope="session")
def trained(synthetic, tiny_arch, tiny_recipe):
    """A tiny model trained on the synthetic train split (do not modify it in tests)."""
    from ltu_core.models import build_model
    from ltu_core.train import train_model

    model = build_model(tiny_arch, seed=0)
    train_model(model, synthetic.view(synthetic.split_indices("train")), tiny_recipe, seed=0)
    return model


@pytest.fixture(scope="session")
def tiny_split(synthetic):
    """Forget 12 random train samples; D̂_r = 25 % of the rest."""
    from ltu_core.data import ForgetSpec, make_split

    return make_split(synthetic, ForgetSpec(kind="random", count=12, seed=0), retain_fraction=0.25, seed=0)


@pytest.fixture()
def tiny_task(trained, tiny_arch, tiny_split, tiny_recipe):
    """An UnlearningTask over the tiny split."""
    from ltu_core.methods import UnlearningTask

    return UnlearningTask.from_split(trained, tiny_arch, tiny_split, tiny_recipe, seed=0)


# --- the service -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Jobs run in this process (embedded runner): one intra-op thread, restored afterwards.

    Tiny 8×8 models gain nothing from more, and on a shared 2-core machine spinning OpenMP threads
    make them an order of magnitude slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- artifacts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifacts:
    """Upload files of the tiny synthetic dataset and a model trained on it."""

    dataset: object  # ltu_core UnlearningDataset (the `synthetic` fixture)
    archive: Path
    weights: Path
    recipe: dict

    def subject_with_train_samples(self, index: int = 0) -> str:
        """A subject id with at least two training samples (the `index`-th such, by id)."""
        import numpy as np

        train = self.dataset.split_indices("train")
        ids, counts = np.unique(self.dataset.subject_ids[train], return_counts=True)
        return str(ids[counts >= 2][index])

    def subject_without_train_samples(self) -> str:
        """A subject whose samples are all test/holdout."""
        train = set(self.dataset.subject_ids[self.dataset.split_indices("train")].tolist())
        return next(str(s) for s in sorted(set(self.dataset.subject_ids.tolist())) if s not in train)

    def samples_of(self, subject: str) -> set[str]:
        """Sample ids of one subject (all splits)."""
        return set(self.dataset.sample_ids[self.dataset.subject_ids == subject].tolist())


@pytest.fixture(scope="session")
def artifacts(_one_torch_thread, tmp_path_factory, synthetic, trained, tiny_arch, tiny_recipe) -> Artifacts:
    """The `synthetic` dataset packed as an upload, and the session's `trained` model saved as safetensors."""
    from ltu_core.data import pack_dataset, write_dataset
    from ltu_core.models import save_model

    root = tmp_path_factory.mktemp("uploads")
    write_dataset(synthetic, root / "synthetic")
    archive = pack_dataset(root / "synthetic", root / "synthetic.tar")
    weights = save_model(trained, tiny_arch, root / "tiny.safetensors")
    recipe = {"epochs": tiny_recipe.epochs, "batch_size": tiny_recipe.batch_size, "lr": tiny_recipe.lr}
    return Artifacts(synthetic, archive, weights, recipe)


# --- embedded (SQLite) ---------------------------------------------------------------------------


def embedded_settings(root: Path, **overrides):
    """Settings of an embedded service under `root`, migrated."""
    from ledger import migrate
    from ltu_settings import Settings

    root.mkdir(parents=True, exist_ok=True)
    settings = Settings.build(
        **{
            "home": root,
            "secret_key": "test-secret-" + "x" * 32,
            "admin_api_key": ADMIN_KEY,
            "torch_threads": 1,
            "poll_interval": 0.1,
            "retry_after_seconds": 1,
            "coalesce_window_seconds": 0.0,  # waiting requests still coalesce; nobody waits for more
            # No reference-model training behind every registration: the tests that need the
            # likelihood-ratio tier opt in (tests/worker/test_references.py).
            "audit_reference_models": 0,
            **overrides,
        }
    )
    migrate.upgrade(settings.ledger.database_url)
    return settings


@dataclass
class Service:
    """A running app, its settings and an admin client."""

    settings: object
    app: object
    client: object  # ltu_client.Client with the admin key
    http: object  # the underlying TestClient (raw requests)
    runner: object | None = None
    tiny_ltu: dict = field(default_factory=lambda: dict(TINY_LTU))  # LTU parameters that run in about a second

    def client_for(self, key: str):
        """A client with another API key."""
        from ltu_client import Client

        return Client(http=self.http, api_key=key)


@pytest.fixture()
def make_service(tmp_path):
    """Factory: `make_service(runner=False, **settings overrides)` → a started embedded Service."""
    from contextlib import ExitStack

    from fastapi.testclient import TestClient

    from api.app import create_app
    from ltu_client import Client
    from worker.runner import EmbeddedRunner

    with ExitStack() as stack:

        def make(*, runner: bool = False, **overrides) -> Service:
            root = tmp_path / f"service-{len(stack._exit_callbacks)}"
            settings = embedded_settings(root, **overrides)
            background = [EmbeddedRunner(settings)] if runner else []
            app = create_app(settings, background=background)
            http = stack.enter_context(TestClient(app))
            return Service(settings, app, Client(http=http, api_key=ADMIN_KEY), http, background[0] if runner else None)

        yield make


@pytest.fixture()
def api(make_service):
    """The API alone on SQLite (no runner: submitted requests stay received)."""
    return make_service()


@pytest.fixture()
def embedded(make_service):
    """The embedded service: API + in-process runner on SQLite."""
    return make_service(runner=True)


@dataclass(frozen=True)
class Completed:
    """A service with one completed erasure request."""

    service: Service
    model: object  # ltu_client.Model
    request: object  # ltu_client.DeletionRequest, completed

    @property
    def client(self):
        """The admin client."""
        return self.service.client


def complete_request(service: Service, artifacts: Artifacts, *, subject_index: int = 0) -> Completed:
    """Register the tiny dataset and model, erase one subject and run the job here (no runner thread)."""
    from worker.runner import EmbeddedRunner

    dataset = service.client.register_dataset(artifacts.archive)
    model = service.client.register_model(artifacts.weights, dataset_id=dataset.id, recipe=artifacts.recipe)
    request = service.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples(subject_index)], parameters=service.tiny_ltu
    )
    EmbeddedRunner(service.settings).run_pending()
    done = service.client.get_request(request.id)
    assert done.status == "completed", done.error
    return Completed(service, model, done)


@pytest.fixture()
def submit_backdated():
    """Factory: `submit(service, model_id, subject, days_ago)` → the id of a request received `days_ago` days ago."""
    from datetime import timedelta

    from ledger import requests, tenant_keys
    from ledger.db import Database
    from ledger.tables import Model, utcnow

    def submit(service: Service, model_id: str, subject: str, days_ago: float) -> str:
        database = Database(service.settings.ledger.database_url)
        try:
            with database.transaction() as session:
                model = session.get(Model, model_id)
                key = tenant_keys.current(session, tenant_id=model.tenant_id, secret=service.settings.ledger.secret_key)
                target = requests.Target("subjects", (key.subject_hash(subject),))
                request, _ = requests.create_request(
                    session,
                    tenant_id=model.tenant_id,
                    model=model,
                    target=target,
                    method="ltu",
                    parameters={},
                    idempotency_key=None,
                    body_hash=secrets.token_hex(32),
                    tenant_key_id=key.id,
                    actor="test",
                    now=utcnow() - timedelta(days=days_ago),
                )
                return request.id
        finally:
            database.dispose()

    return submit


@pytest.fixture()
def completed(api, artifacts) -> Completed:
    """An embedded API (no runner thread) with one completed request."""
    return complete_request(api, artifacts)


@pytest.fixture(params=["sqlite", "postgres"])
def completed_on_each_ledger(request, make_service, artifacts) -> Completed:
    """`completed` with its ledger on SQLite, then on a Postgres database of its own."""
    if request.param == "sqlite":
        return complete_request(make_service(), artifacts)
    postgres = {"database_url": request.getfixturevalue("fresh_postgres_url"), "secret_key": secrets.token_urlsafe(48)}
    return complete_request(make_service(**postgres), artifacts)


# --- headless Chromium ---------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"  # Debian's package: apt-get install -y chromium
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@pytest.fixture()
def chromium():
    """A launched headless Chromium (Debian's, driven by playwright; never `playwright install`)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        unavailable(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        yield browser
        browser.close()


# --- Postgres + Redis + Celery -------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh, migrated Postgres database for this session (dropped at the end)."""
    import psycopg

    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"ltu_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        unavailable(f"Postgres is not reachable at {admin} ({type(exc).__name__}: {exc})")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from ledger import migrate

    migrate.upgrade(url)
    yield url
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def fresh_postgres_url(postgres_url):
    """A migrated Postgres database of this test alone (for tests that tamper with it), dropped afterwards."""
    import psycopg

    from ledger import migrate

    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"ltu_test_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(url)
    yield url
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url():
    """The Redis broker URL (a dedicated DB index)."""
    import redis

    url = f"{REDIS_HOST_URL}/{REDIS_DB}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {REDIS_HOST_URL} ({type(exc).__name__}: {exc})")
    return url


@pytest.fixture(scope="session")
def celery_stack(tmp_path_factory, postgres_url, redis_url):
    """Settings shared by the API and a real `celery worker` subprocess on a queue of its own."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ltu_settings import Settings

    root = tmp_path_factory.mktemp("celery-stack")
    queue = f"gpu-test-{secrets.token_hex(4)}"
    signing_key = root / "certificate-key.pem"  # deployed: a configured key, never a generated one
    signing_key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    settings = Settings.build(
        home=root,
        database_url=postgres_url,
        secret_key=secrets.token_urlsafe(48),
        broker_url=redis_url,
        admin_api_key=ADMIN_KEY,
        queue=queue,
        audit_reference_models=0,  # nothing lands on a shared audit queue no test worker consumes
        device="cpu",
        torch_threads=1,
        poll_interval=0.2,
        retry_after_seconds=1,
        certificate_key_file=signing_key,
        webhook_allow_private_addresses=True,  # the webhook tests' receiver is on loopback
    )
    env = {
        **os.environ,
        "LTU_HOME": str(root),
        "LTU_DATABASE_URL": postgres_url,
        "LTU_BROKER_URL": redis_url,
        "LTU_ARTIFACTS_DIR": str(settings.ledger.artifacts_dir),
        "LTU_SECRET_KEY": settings.ledger.secret_key,
        "LTU_QUEUE": queue,
        "LTU_DEVICE": "cpu",
        "LTU_TORCH_THREADS": "1",
        "LTU_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    log = root / "worker.log"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-P",
        "solo",
        "-c",
        "1",
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while b" ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the celery worker did not start:\n{log.read_text()[-4000:]}", pytrace=False)
            time.sleep(0.2)
        yield settings, process, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        import redis

        broker = redis.Redis.from_url(redis_url)
        leftovers = list(broker.scan_iter(f"*{queue}*"))
        if leftovers:
            broker.delete(*leftovers)


@pytest.fixture()
def celery_service(celery_stack):
    """The API on Postgres, enqueueing to the Celery worker through the outbox relay."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from ltu_client import Client

    settings, _, _ = celery_stack
    app = create_app(settings)
    with TestClient(app) as http:
        yield Service(settings, app, Client(http=http, api_key=ADMIN_KEY), http)


def pytest_collection_modifyitems(config, items):
    """Mark the tests that start real processes (e2e, bench) `slow`: `pytest -m "not slow"` is the quick loop."""
    for item in items:
        if {"e2e", "bench"} & set(item.path.relative_to(REPO / "tests").parts[:1]):
            item.add_marker(pytest.mark.slow)
