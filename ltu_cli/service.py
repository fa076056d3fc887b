"""Service commands: serve, worker, migrate, keys, purge, certificate verify, demo and
request {submit,status,wait,list}.

This module is the service's composition root: it reads the environment once
(`ledger.settings.Settings.from_env`) and wires the API, the ledger and the runner together.
Handlers import heavy packages (torch, uvicorn, celery, the service) only when they run.

Environment: LTU_HOME (state directory, default ./.ltu), LTU_DATABASE_URL (Postgres; default the
SQLite file in LTU_HOME), LTU_BROKER_URL (Redis for Celery workers; default in-process runner),
LTU_SECRET_KEY (required outside embedded mode), LTU_ADMIN_API_KEY (registered at start-up),
LTU_CERTIFICATE_KEY_FILE (Ed25519 PEM signing certificates; generated in LTU_HOME when embedded),
LTU_PURGE_GRACE_HOURS, LTU_DUE_SOON_DAYS, LTU_QUEUE, LTU_DEVICE, LTU_TORCH_THREADS,
LTU_RATE_LIMIT_PER_MINUTE, LTU_RATE_LIMIT_BURST, LTU_MAX_BODY_BYTES; LTU_LOG_LEVEL and
LTU_LOG_FORMAT (json | text) for `serve`; for the client commands LTU_URL and LTU_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
ADMIN_KEY_FILE = "admin.key"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the service's subcommands."""
    p = sub.add_parser("serve", help="run the HTTP API (embedded: SQLite + in-process runner under LTU_HOME)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--migrate", action="store_true", help="migrate the database first (always done for the embedded SQLite file)")
    p.add_argument("--workers", type=int, default=1,
                   help="API processes (default 1); more than one needs LTU_BROKER_URL (jobs run in Celery workers)")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("worker", help="run a Celery worker for erasure jobs (needs LTU_BROKER_URL)")
    p.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"), help="Celery pool (default prefork)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at a time; one per GPU (default 1)")
    p.add_argument("--queue", default=None, help="queue to consume (default LTU_QUEUE or gpu)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--no-relay", action="store_true", help="do not run the outbox relay in this worker")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("migrate", help="migrate the ledger database to the newest schema (Alembic)")
    p.set_defaults(handler=_migrate)

    p = sub.add_parser("keys", help="manage API keys directly in the ledger (operators)")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="create an API key (and its tenant if new); prints the secret once")
    k.add_argument("--tenant", default="default", help="tenant name (default: default)")
    k.add_argument("--name", default="cli", help="a label for the key")
    k.add_argument("--scopes", default="submit,read", help="comma-separated: submit, read, audit, admin (default submit,read)")
    k.set_defaults(handler=_keys_create)

    p = sub.add_parser("purge", help="delete superseded model weights past the grace period (LTU_PURGE_GRACE_HOURS), once")
    p.set_defaults(handler=_purge)

    p = sub.add_parser("certificate", help="erasure certificates")
    cert = p.add_subparsers(dest="certificate_command", required=True, metavar="ACTION")
    c = cert.add_parser("verify", help="check a certificate's Ed25519 signature offline (exit 0 valid, 1 invalid)")
    c.add_argument("file", type=Path, help="the certificate (GET /v1/deletion-requests/{id}/certificate)")
    key_source = c.add_mutually_exclusive_group()
    key_source.add_argument("--public-key", type=Path, default=None, metavar="FILE",
                            help="the service's public key: the JWK of /.well-known/ltu-certificate-key, or a PEM file")
    key_source.add_argument("--url", default=None,
                            help=f"fetch the public key from this service instead (default LTU_URL or {DEFAULT_URL})")
    c.set_defaults(handler=_certificate_verify)

    p = sub.add_parser("demo", help="end-to-end demo: train on sklearn digits, erase one data subject over HTTP, verify")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of the demo model (default 20)")
    p.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier (default 0.25)")
    p.add_argument("--method", default=None, help="unlearning method (default: the service's, ltu)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--port", type=int, default=0, help="port of the demo server (default: any free port)")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("request", help="deletion requests against a running service (HTTP client)")
    req = p.add_subparsers(dest="request_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help=f"service URL (default LTU_URL or {DEFAULT_URL})")
    common.add_argument("--api-key", default=None, help="API key (default LTU_API_KEY, else LTU_HOME/admin.key)")
    common.add_argument("--json", action="store_true", help="print the full JSON answer")

    r = req.add_parser("submit", parents=[common], help="submit an erasure request (202)")
    r.add_argument("--model", required=True, help="model id")
    target = r.add_mutually_exclusive_group(required=True)
    target.add_argument("--subject", action="append", dest="subjects", metavar="SUBJECT_ID", help="data subject id (repeatable)")
    target.add_argument("--sample", action="append", dest="samples", metavar="SAMPLE_ID", help="sample id (repeatable)")
    r.add_argument("--method", default=None, help="unlearning method (default ltu)")
    r.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter; VALUE is JSON or text (repeatable)")
    r.add_argument("--idempotency-key", default=None, help="resubmitting with the same key returns the same request")
    r.add_argument("--wait", action="store_true", help="wait until the request finishes")
    r.set_defaults(handler=_request_submit)

    r = req.add_parser("status", parents=[common], help="show a request")
    r.add_argument("request_id")
    r.set_defaults(handler=_request_status)

    r = req.add_parser("wait", parents=[common], help="wait for a request to finish (progress bar)")
    r.add_argument("request_id")
    r.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    r.set_defaults(handler=_request_wait)

    r = req.add_parser("list", parents=[common], help="list requests, newest first")
    r.add_argument("--status", default=None, choices=("received", "queued", "running", "completed", "failed", "cancelled"))
    r.add_argument("--model", default=None, help="only this model's requests")
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--cursor", default=None, help="next_cursor of a previous page")
    r.set_defaults(handler=_request_list)


# --- composition ------------------------------------------------------------------------------------


def _settings():
    from ledger.settings import ConfigError, Settings

    from ltu_cli.main import CLIError

    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def _local_admin_key(settings) -> str | None:
    """LTU_ADMIN_API_KEY, else (embedded mode) the key kept in LTU_HOME/admin.key, created on first use."""
    if settings.admin_api_key:
        return settings.admin_api_key
    if not settings.dev_mode:
        return None
    path = settings.home / ADMIN_KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    key = "ltu_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _migrate_db(settings) -> None:
    from ledger import migrate

    migrate.upgrade(settings.database_url)


def _build_app(settings, *, embedded_runner: bool):
    """The API; embedded, with the in-process runner, reconciler and purge loop beside it (else the workers run those)."""
    from api.app import create_app

    background = []
    if embedded_runner:
        from worker.reconciler import ReconcileLoop
        from worker.retention import PurgeLoop
        from worker.runner import EmbeddedRunner

        background += [EmbeddedRunner(settings), ReconcileLoop(settings), PurgeLoop(settings)]
    return create_app(settings, background=background)


def _configure_logging() -> None:
    """JSON lines on stderr (LTU_LOG_FORMAT=text for a terminal) at LTU_LOG_LEVEL (default INFO)."""
    from ledger.observability import configure_logging_from_env
    from ledger.settings import ConfigError

    from ltu_cli.main import CLIError

    try:
        configure_logging_from_env()
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ltu_cli.main import CLIError

    _configure_logging()
    settings = _settings()
    settings = settings.with_(admin_api_key=_local_admin_key(settings))
    if args.workers < 1:
        raise CLIError("--workers must be at least 1")
    if args.workers > 1 and settings.embedded_runner:
        raise CLIError("--workers above 1 needs LTU_BROKER_URL: the embedded runner executes jobs inside the one API process")
    if settings.dev_mode or args.migrate:
        _migrate_db(settings)
    runner = "in-process runner" if settings.embedded_runner else f"Celery queue {settings.queue!r}"
    print(f"ltu serve: http://{args.host}:{args.port}  (ledger {_redact(settings.database_url)}, {runner}, "
          f"{args.workers} process{'es' if args.workers > 1 else ''})", file=sys.stderr)
    if settings.dev_mode and not os.environ.get("LTU_ADMIN_API_KEY"):
        print(f"ltu serve: admin API key in {settings.home / ADMIN_KEY_FILE}", file=sys.stderr)
    # uvicorn's records go to the handler configure_logging installed (log_config=None keeps uvicorn's
    # own off); its access log is replaced by the API's, which names route templates, not raw URLs.
    if args.workers > 1:  # each process builds its own app from the same environment
        uvicorn.run("ltu_cli.service:app_from_env", factory=True, workers=args.workers, host=args.host,
                    port=args.port, log_config=None, access_log=False)
    else:
        uvicorn.run(_build_app(settings, embedded_runner=settings.embedded_runner), host=args.host,
                    port=args.port, log_config=None, access_log=False)
    return 0


def app_from_env():
    """ASGI factory of one API process of `ltu serve --workers N` (broker mode: no runner inside)."""
    _configure_logging()
    settings = _settings()
    return _build_app(settings.with_(admin_api_key=_local_admin_key(settings)), embedded_runner=False)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _worker(args: argparse.Namespace) -> int:
    from ltu_cli.main import CLIError

    settings = _settings()
    if not settings.broker_url:
        raise CLIError("LTU_BROKER_URL is not set: without a broker `ltu serve` runs jobs in-process and needs no worker")
    if args.queue:
        settings = settings.with_(queue=args.queue)
    from worker.celery_app import create_celery

    app = create_celery(settings, relay=not args.no_relay)
    app.worker_main(["worker", "-Q", settings.queue, "-P", args.pool, "-c", str(args.concurrency),
                     "--loglevel", args.loglevel, "-n", f"ltu-{settings.queue}@%h"])
    return 0


def _migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    _migrate_db(settings)
    print(f"ltu migrate: {_redact(settings.database_url)} is at the newest schema", file=sys.stderr)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from ledger import tenants
    from ledger.db import Database
    from ledger.errors import LedgerError

    from ltu_cli.main import CLIError

    settings = _settings()
    database = Database(settings.database_url)
    try:
        with database.transaction() as session:
            tenant = tenants.ensure_tenant(session, name=args.tenant, actor="cli")
            _, secret = tenants.create_key(session, tenant_id=tenant.id, name=args.name,
                                           scopes=[s.strip() for s in args.scopes.split(",") if s.strip()], actor="cli")
    except LedgerError as exc:
        raise CLIError(str(exc)) from None
    finally:
        database.dispose()
    print(secret)
    return 0


def _purge(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from ledger.artifacts import ArtifactStore
    from ledger.db import Database
    from worker.retention import purge_due

    settings = _settings()
    database = Database(settings.database_url)
    try:
        purged = purge_due(database, ArtifactStore(settings.artifacts_dir), grace=timedelta(hours=settings.purge_grace_hours))
    finally:
        database.dispose()
    for p in purged:
        print(f"purged model {p.model_id} version {p.number} (sha256 {p.sha256})")
    print(f"ltu purge: {len(purged)} version(s) purged (grace {settings.purge_grace_hours:g} h)", file=sys.stderr)
    return 0


def _certificate_verify(args: argparse.Namespace) -> int:
    from api.signing import CertificateInvalid, load_public_key, verify_certificate

    from ltu_cli.main import CLIError

    try:
        document = args.file.read_bytes()
        if args.public_key is not None:
            key_text = args.public_key.read_text()
        else:
            from ltu_client import Client

            with Client(args.url or os.environ.get("LTU_URL") or DEFAULT_URL) as client:
                key_text = json.dumps(_call(client.certificate_key))
        public_key = load_public_key(key_text)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    try:
        content = verify_certificate(document, public_key)
    except CertificateInvalid as exc:
        print(f"ltu certificate verify: INVALID: {exc}", file=sys.stderr)
        return 1
    model, request = content["model"], content["request"]
    verdict = "passed" if content["verification"]["passed"] else "failed"
    print(f"valid: erasure certificate of request {request['id']}, completed {request['completed_at']}; model "
          f"{model['id']} version {model['base_version']['number']} → {model['new_version']['number']} "
          f"(sha256 {model['new_version']['sha256']}); verification {verdict}")
    return 0


# --- the HTTP client commands ----------------------------------------------------------------------


def _client(args: argparse.Namespace):
    from ltu_client import Client

    url = args.url or os.environ.get("LTU_URL") or DEFAULT_URL
    key = args.api_key or os.environ.get("LTU_API_KEY")
    if not key:
        home = Path(os.environ.get("LTU_HOME") or ".ltu")
        if (home / ADMIN_KEY_FILE).is_file():
            key = (home / ADMIN_KEY_FILE).read_text().strip()
    return Client(url, key)


def _call(fn, *args: Any, **kwargs: Any):
    """Run a client call; service errors become one-line CLI errors."""
    from ltu_client import ApiError

    from ltu_cli.main import CLIError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise CLIError(str(exc)) from None


def _print_request(request, as_json: bool) -> None:
    import dataclasses

    if as_json:
        print(json.dumps(dataclasses.asdict(request), default=str, indent=2))
        return
    progress = request.progress or {}
    line = f"{request.id}  {request.status}"
    if request.status == "running":
        line += f"  {progress.get('phase')} {progress.get('step')}/{progress.get('total')}"
    if request.result_version is not None:
        line += f"  → version {request.result_version} sha256 {request.result_sha256}"
    if request.error:
        line += f"  error {request.error.get('code')}: {request.error.get('message')}"
    print(line)


def _request_submit(args: argparse.Namespace) -> int:
    from ltu_cli.main import parse_params

    with _client(args) as client:
        request = _call(client.submit_deletion, args.model, subject_ids=args.subjects, sample_ids=args.samples,
                        method=args.method, parameters=parse_params(args.param), idempotency_key=args.idempotency_key)
        if args.wait:
            request = _wait_with_bar(client, request.id, timeout=3600.0)
    _print_request(request, args.json)
    return 0 if request.status != "failed" else 1


def _request_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_request(_call(client.get_request, args.request_id), args.json)
    return 0


def _request_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        request = _wait_with_bar(client, args.request_id, timeout=args.timeout)
    _print_request(request, args.json)
    return 0 if request.status == "completed" else 1


def _request_list(args: argparse.Namespace) -> int:
    import dataclasses

    with _client(args) as client:
        page = _call(client.list_requests, status=args.status, model_id=args.model, cursor=args.cursor, limit=args.limit)
    if args.json:
        print(json.dumps({"items": [dataclasses.asdict(r) for r in page.items], "next_cursor": page.next_cursor}, default=str, indent=2))
        return 0
    for r in page.items:
        received = r.received_at.strftime("%Y-%m-%d %H:%M:%S") if r.received_at else "?"
        version = f"v{r.result_version}" if r.result_version else ""
        print(f"{r.id}  {received}  {r.status:<9}  model {r.model_id}  {r.method}  {version}")
    if page.next_cursor:
        print(f"(more: --cursor {page.next_cursor})")
    return 0


def _wait_with_bar(client, request_id: str, *, timeout: float):
    """Poll a request with a tqdm bar per phase; returns the finished request."""
    from tqdm import tqdm

    from ltu_cli.main import CLIError

    state: dict[str, Any] = {"bar": None, "phase": None}

    def update(request) -> None:
        if request.done:
            return
        progress = request.progress or {}
        phase = progress.get("phase") if request.status == "running" else None
        label = f"running: {phase}" if phase else request.status
        total = max(1, int(progress.get("total") or 1))
        if label != state["phase"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=total, desc=f"{label:<28}", unit="step", leave=False, file=sys.stderr,
                                bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}]")
            state["phase"] = label
        bar = state["bar"]
        if bar.total != total:
            bar.total = total
        bar.n = min(int(progress.get("step") or 0), total)
        bar.refresh()

    try:
        return _call(client.wait, request_id, timeout=timeout, poll=0.5, on_update=update)
    except TimeoutError as exc:
        raise CLIError(str(exc)) from None
    finally:
        if state["bar"] is not None:
            state["bar"].close()


# --- the demo ---------------------------------------------------------------------------------------

DEMO_SUBJECT_SAMPLES = 4


def _demo(args: argparse.Namespace) -> int:
    """Embedded service + digits + one erasure over HTTP, printed for a person to read."""
    import time

    from ltu_cli.main import CLIError

    started = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: digits ship with scikit-learn
    settings = _settings()
    key = _local_admin_key(settings)
    if key is None:
        raise CLIError("set LTU_ADMIN_API_KEY: the demo needs an admin key for a non-embedded ledger")
    # Tiny 8×8 models gain nothing from intra-op threads, and on a shared CPU spinning OpenMP
    # threads slow training down by an order of magnitude: one thread unless told otherwise.
    settings = settings.with_(broker_url=None, admin_api_key=key, torch_threads=settings.torch_threads or 1)
    import torch

    torch.set_num_threads(settings.torch_threads)
    _migrate_db(settings)
    app = _build_app(settings, embedded_runner=True)
    server, thread, url = _start_server(app, args.port)
    print(f"LTU erasure demo: state in {settings.home} (ledger {_redact(settings.database_url)}, in-process runner)")
    print(f"service   {url}  (OpenAPI: {url}/docs)")
    try:
        from ltu_client import Client

        with Client(url, key, timeout=120.0) as client:
            _demo_scenario(client, args, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    print(f"\ndone in {time.monotonic() - started:.0f} s. The state stays in {settings.home}: "
          "`ltu serve` shows the same models, requests and audit events.")
    return 0


def _start_server(app, port: int):
    """Run uvicorn in a background thread; returns (server, thread, base URL) once it listens."""
    import threading
    import time

    import uvicorn

    from ltu_cli.main import CLIError

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ltu-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise CLIError(f"the demo server did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{bound}"


def _demo_scenario(client, args: argparse.Namespace, settings) -> None:
    import time

    import numpy as np
    from ltu_core.data import load_digits, pack_dataset, write_dataset
    from ltu_core.models import ArchConfig, build_model, predict, save_model
    from ltu_core.train import TrainRecipe, train_model

    from ltu_cli.main import parse_params

    work = settings.home / "demo" / time.strftime("%Y%m%d-%H%M%S")  # upload files and the downloaded version
    work.mkdir(parents=True, exist_ok=True)
    dataset = load_digits()
    train = dataset.split_indices("train")
    subjects = np.unique(dataset.subject_ids)
    write_dataset(dataset, work / "digits")
    archive = pack_dataset(work / "digits", work / "digits.tar")
    registered = _call(client.register_dataset, archive, name="digits (scikit-learn)")
    print(f"\n[1/5] dataset  scikit-learn digits: {len(dataset):,} images 1×8×8, {dataset.num_classes} classes, "
          f"{len(subjects)} data subjects; {len(train):,} train / {len(dataset.split_indices('test'))} test / "
          f"{len(dataset.split_indices('holdout'))} holdout")
    print(f"      registered dataset {registered.id} (archive sha256 {registered.archive_sha256[:16]}…)")

    arch = ArchConfig("resnet18", num_classes=dataset.num_classes, in_chans=1, img_size=8, width=args.width)
    recipe = TrainRecipe(epochs=args.epochs, batch_size=64, lr=0.05)
    model = build_model(arch, seed=0)
    t0 = time.monotonic()
    train_model(model, dataset.view(train), recipe, seed=0)
    test_acc = predict(model, dataset.view(dataset.split_indices("test"))).accuracy()
    weights = save_model(model, arch, work / "digits-resnet18.safetensors")
    registered_model = _call(client.register_model, weights, dataset_id=registered.id, name="digits-resnet18",
                             recipe={"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr})
    v1 = _call(client.get_version, registered_model.id, 1)
    print(f"[2/5] model    ResNet-18 (width {args.width}, 3×3 stem) trained {recipe.epochs} epochs in "
          f"{time.monotonic() - t0:.0f} s: test accuracy {test_acc:.1f} %")
    print(f"      registered model {registered_model.id}, version 1 sha256 {v1.sha256[:16]}…")

    subject, exposure = _most_exposed_subject(model, dataset)
    print(f"      most exposed data subject: {subject}, whose {DEMO_SUBJECT_SAMPLES} training samples' margins rank "
          f"{exposure:.2f} among never-seen digits (0.50 would look unseen)")
    params = parse_params(args.param)
    request = _call(client.submit_deletion, registered_model.id, subject_ids=[subject], method=args.method,
                    parameters=params, idempotency_key=f"demo-{registered_model.id}")
    print(f"[3/5] request  POST /v1/deletion-requests  subject_ids=[{subject!r}]  →  202 Accepted, "
          f"Location /v1/deletion-requests/{request.id}")
    print(f"      method {request.method}; due {request.due_at:%Y-%m-%d} (GDPR: one calendar month after receipt)")
    print("[4/5] waiting  (polling GET /v1/deletion-requests/{id})")
    request = _wait_with_bar(client, request.id, timeout=900.0)
    print(f"[5/5] result   {request.status}" + (f"  ({request.error})" if request.error else ""))
    _print_outcome(client, request, work)


def _most_exposed_subject(model, dataset) -> tuple[str, float]:
    """The subject (all samples in train) whose margins rank highest among holdout samples.

    The request a privacy team worries about most: the model memorised this person's samples
    the most, so a membership-inference attacker singles them out.
    """
    import numpy as np
    from ltu_core.mia.verify import margin, mean_percentile_rank
    from ltu_core.models import predict

    train = dataset.split_indices("train")
    train_margins = margin(predict(model, dataset.view(train)))
    unseen = margin(predict(model, dataset.view(dataset.split_indices("holdout"))))
    owners = dataset.subject_ids[train]
    names, counts = np.unique(dataset.subject_ids, return_counts=True)
    total = dict(zip(names, counts))
    ranks = {
        str(s): mean_percentile_rank(train_margins[owners == s], unseen)
        for s in np.unique(owners)
        if (owners == s).sum() == DEMO_SUBJECT_SAMPLES == total[s]
    }
    best = max(ranks, key=ranks.get)
    return best, ranks[best]


def _print_outcome(client, request, work: Path) -> None:
    events = _call(client.audit_events, request_id=request.id)
    start = request.received_at
    print("\n  status timeline")
    for e in events:
        if e.action.startswith("deletion_request."):
            extra = f"attempt {e.data['attempt']}" if "attempt" in e.data else ""
            print(f"    +{(e.occurred_at - start).total_seconds():6.1f} s  {e.action.split('.', 1)[1]:<10} {extra}")
    before, after = request.metrics_before or {}, request.metrics_after or {}
    if before:
        print("\n  metrics (%)                         before    after")
        rows = [("UA  forget-set error (↑ forgets)", "ua"), ("RA  retained-set accuracy", "ra"),
                ("TA  test accuracy", "ta"), ("MIA forget called non-member (↑)", "mia")]
        for label, k in rows:
            b, a = before.get(k), after.get(k)
            print(f"    {label:<33} {_pct(b)}  {_pct(a)}")
    verification = request.verification or {}
    for when in ("before", "after"):
        v = verification.get(when)
        if v:
            outcome = "passed" if v["passed"] else ("INCONCLUSIVE" if not v["conclusive"] else "FAILED")
            print(f"  verdict {when:<6}  forget margins rank {v['forget_mean_rank']:.2f} among unseen data "
                  f"(0.50 = looks unseen; pass ≤ {v['rank_threshold']:.2f}, n={v['n_forget']}); "
                  f"TA {v['test_accuracy']:.1f} % → {outcome}")
    if verification.get("fallback"):
        fb = verification["fallback"]
        print(f"  fallback        {fb['reason']}: the published model was retrained from scratch on D_r")
    if request.result_version is not None:
        path = _call(client.download_weights, request.model_id, request.result_version,
                     work / f"model-v{request.result_version}.safetensors")
        print(f"\n  new version     {request.result_version} (parent {request.base_version}), sha256 {request.result_sha256}")
        print(f"                  downloaded to {path}, sha256 checked")
        samples = _call(client.request_samples, request.id)
        erased = [s for s in samples if s.erased_by_request_id == request.id]
        splits = ", ".join(f"{sum(s.split == sp for s in erased)} {sp}" for sp in ("train", "test", "holdout") if any(s.split == sp for s in erased))
        print(f"  erased samples  {len(erased)} of the subject's samples are marked erased ({splits}); no later run reads them")
    print("\n  audit trail of the request")
    for e in events:
        data = {k: v for k, v in e.data.items() if k not in ("subject_hashes",)}
        print(f"    {e.occurred_at:%H:%M:%S.%f}"[:-3] + f"  {e.action:<32} {e.actor[:20]:<20} {json.dumps(data, default=str)[:90]}")


def _pct(value) -> str:
    return f"{value:7.1f}" if isinstance(value, (int, float)) else "      –"
