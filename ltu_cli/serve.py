"""Operating the service: `ltu serve`, `ltu worker`, `ltu migrate`, `ltu keys`, `ltu purge`, `ltu secret`.

This module is the service's composition root: it reads the environment once (through
`common.load_settings`) and wires the API, the ledger and the runner together; `ltu demo` reuses
that wiring. Handlers import heavy packages (uvicorn, celery, the API app) only when they run.

Environment: LTU_HOME (state directory, default ./.ltu), LTU_DATABASE_URL (Postgres; default the
SQLite file in LTU_HOME), LTU_BROKER_URL (Redis for Celery workers; default in-process runner),
LTU_SECRET_KEY (required outside embedded mode; checked against the ledger's check value at every
start), LTU_ADMIN_API_KEY (registered at start-up; both may be given as LTU_*_FILE),
LTU_CERTIFICATE_KEY_FILE (Ed25519 PEM signing certificates; generated in LTU_HOME when embedded),
LTU_PURGE_GRACE_HOURS, LTU_DUE_SOON_DAYS, LTU_QUEUE, LTU_DEVICE, LTU_TORCH_THREADS,
LTU_RATE_LIMIT_PER_MINUTE, LTU_RATE_LIMIT_BURST, LTU_MAX_BODY_BYTES, LTU_FORWARDED_ALLOW_IPS; LTU_LOG_LEVEL and
LTU_LOG_FORMAT (json | text) for `serve`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from ltu_cli.common import ADMIN_KEY_FILE, CLIError, configure_logging, load_settings, redact


def register(sub: argparse._SubParsersAction) -> None:
    """Add serve, worker, migrate, keys, purge and secret."""
    p = sub.add_parser("serve", help="run the HTTP API (embedded: SQLite + in-process runner under LTU_HOME)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--migrate", action="store_true", help="migrate the database first (always done for the embedded SQLite file)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes (default 1); more than one needs LTU_BROKER_URL (jobs run in Celery workers)",
    )
    p.set_defaults(handler=_serve)

    p = sub.add_parser(
        "worker", help="run a Celery worker for erasure and audit reference-model jobs (needs LTU_BROKER_URL)"
    )
    p.add_argument(
        "--pool", default="prefork", choices=("prefork", "solo", "threads"), help="Celery pool (default prefork)"
    )
    p.add_argument("--concurrency", type=int, default=1, help="jobs at a time; one per GPU (default 1)")
    p.add_argument("--queue", default=None, help="queue of erasure jobs (default LTU_QUEUE or gpu)")
    p.add_argument(
        "--audit-queue", default=None, help="queue of audit reference-model jobs (default LTU_AUDIT_QUEUE or audit)"
    )
    p.add_argument(
        "--consume",
        default="all",
        choices=("all", "erasures", "audit"),
        help="which queues this worker takes jobs from (default all; one job at a time, so a worker of its own "
        "for `audit` keeps long reference trainings from delaying erasures)",
    )
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--no-relay", action="store_true", help="do not run the outbox relay in this worker")
    p.set_defaults(handler=_worker)

    p = sub.add_parser(
        "migrate", help="migrate the ledger database to the newest schema (Alembic), as the role that owns it"
    )
    p.add_argument(
        "--app-role",
        metavar="ROLE",
        help="Postgres role of the API and workers: given exactly the privileges they need (README, Deployment)",
    )
    p.set_defaults(handler=_migrate)

    p = sub.add_parser("keys", help="manage API keys directly in the ledger (operators)")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="create an API key (and its tenant if new); prints the secret once")
    k.add_argument("--tenant", default="default", help="tenant name (default: default)")
    k.add_argument("--name", default="cli", help="a label for the key")
    k.add_argument(
        "--scopes", default="submit,read", help="comma-separated: submit, read, audit, admin (default submit,read)"
    )
    k.set_defaults(handler=_keys_create)

    p = sub.add_parser(
        "purge",
        help="delete superseded model weights past the grace period (LTU_PURGE_GRACE_HOURS), erased samples' "
        "pixels no model still needs, and artifacts no ledger row references (LTU_ARTIFACT_SWEEP_GRACE_HOURS), once",
    )
    p.set_defaults(handler=_purge)

    p = sub.add_parser("secret", help="the server secret (LTU_SECRET_KEY) and the tenant keys wrapped under it")
    actions = p.add_subparsers(dest="secret_command", required=True, metavar="ACTION")
    r = actions.add_parser(
        "rotate", help="make the ledger expect a new secret: every tenant key is re-wrapped, no hash changes"
    )
    r.add_argument("--new-key-file", required=True, type=Path, help="file holding the new secret")
    r.set_defaults(handler=_secret_rotate)
    r = actions.add_parser(
        "shred-tenant",
        help="destroy a tenant's key (crypto-shredding): its stored hashes can never be linked to a subject id again",
    )
    r.add_argument("--tenant", required=True, help="the tenant's name")
    r.add_argument("--confirm", required=True, metavar="NAME", help="the tenant's name again (this cannot be undone)")
    r.set_defaults(handler=_secret_shred_tenant)


# --- composition ------------------------------------------------------------------------------------


def local_admin_key(settings) -> str | None:
    """LTU_ADMIN_API_KEY, else (embedded mode) the key kept in LTU_HOME/admin.key, created on first use."""
    if settings.api.admin_api_key:
        return settings.api.admin_api_key
    if not settings.dev_mode:
        return None
    path = settings.ledger.home / ADMIN_KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    key = "ltu_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def migrate_db(settings) -> None:
    """Bring the ledger database to the newest schema."""
    from ledger import migrate

    migrate.upgrade(settings.ledger.database_url)


def verify_secret(settings, *, actor: str) -> None:
    """Refuse a server secret other than the one the ledger's hashes are keyed by (ledger.secret_check)."""
    from ledger.errors import ConfigError
    from ledger.secret_check import check_secret_at

    try:
        check_secret_at(settings.ledger.database_url, settings.ledger.secret_key, actor=actor)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def build_app(settings, *, embedded_runner: bool):
    """The API; embedded: with the in-process runner, reconciler and purge loop beside it (else workers run those)."""
    from api.app import create_app

    background = []
    if embedded_runner:
        from worker.reconciler import ReconcileLoop
        from worker.retention import PurgeLoop
        from worker.runner import EmbeddedRunner

        background += [EmbeddedRunner(settings), ReconcileLoop(settings), PurgeLoop(settings)]
    return create_app(settings, background=background)


def app_from_env():
    """ASGI factory of one API process of `ltu serve --workers N` (broker mode: no runner inside)."""
    configure_logging()
    settings = load_settings()
    return build_app(settings.replace(admin_api_key=local_admin_key(settings)), embedded_runner=False)


# --- the commands ------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    configure_logging()
    settings = load_settings()
    configured_key = settings.api.admin_api_key  # LTU_ADMIN_API_KEY or its _FILE; else admin.key when embedded
    settings = settings.replace(admin_api_key=local_admin_key(settings))
    if args.workers < 1:
        raise CLIError("--workers must be at least 1")
    if args.workers > 1 and settings.embedded_runner:
        raise CLIError(
            "--workers above 1 needs LTU_BROKER_URL: the embedded runner executes jobs inside the one API process"
        )
    if settings.dev_mode or args.migrate:
        migrate_db(settings)
    verify_secret(settings, actor="system")
    runner = "in-process runner" if settings.embedded_runner else f"Celery queue {settings.worker.queue!r}"
    print(
        f"ltu serve: http://{args.host}:{args.port}  (ledger {redact(settings.ledger.database_url)}, {runner}, "
        f"{args.workers} process{'es' if args.workers > 1 else ''})",
        file=sys.stderr,
    )
    if settings.api.admin_api_key and not configured_key:
        print(f"ltu serve: admin API key in {settings.ledger.home / ADMIN_KEY_FILE}", file=sys.stderr)
    # uvicorn's records go to the handler configure_logging installed (log_config=None keeps uvicorn's
    # own off); its access log is replaced by the API's, which names route templates, not raw URLs.
    if args.workers > 1:  # each process builds its own app from the same environment
        uvicorn.run(
            "ltu_cli.serve:app_from_env",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            forwarded_allow_ips=settings.api.forwarded_allow_ips,
            http="api.http_protocol:ProblemH11Protocol",  # malformed HTTP gets problem+json too
        )
    else:
        uvicorn.run(
            build_app(settings, embedded_runner=settings.embedded_runner),
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            forwarded_allow_ips=settings.api.forwarded_allow_ips,
            http="api.http_protocol:ProblemH11Protocol",  # malformed HTTP gets problem+json too
        )
    return 0


def _worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.ledger.broker_url:
        raise CLIError(
            "LTU_BROKER_URL is not set: without a broker `ltu serve` runs jobs in-process and needs no worker"
        )
    if args.queue:
        settings = settings.replace(queue=args.queue)
    if args.audit_queue:
        settings = settings.replace(audit_queue=args.audit_queue)
    queues = {
        "all": [settings.worker.queue, settings.worker.audit_queue],
        "erasures": [settings.worker.queue],
        "audit": [settings.worker.audit_queue],
    }[args.consume]
    queues = list(dict.fromkeys(queues))
    from worker.celery_app import create_celery

    app = create_celery(settings, relay=not args.no_relay)
    app.worker_main(
        [
            "worker",
            "-Q",
            ",".join(queues),
            "-P",
            args.pool,
            "-c",
            str(args.concurrency),
            "--loglevel",
            args.loglevel,
            "-n",
            f"ltu-{'-'.join(queues)}@%h",
        ]
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from ledger.roles import grant_app_role

    settings = load_settings()
    migrate_db(settings)
    if args.app_role:
        try:
            grant_app_role(settings.ledger.database_url, args.app_role)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    verify_secret(settings, actor="system")
    print(f"ltu migrate: {redact(settings.ledger.database_url)} is at the newest schema", file=sys.stderr)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from ledger import tenants
    from ledger.db import Database
    from ledger.errors import LedgerError

    settings = load_settings()
    database = Database(settings.ledger.database_url)
    try:
        with database.transaction() as session:
            tenant = tenants.ensure_tenant(session, name=args.tenant, actor="cli")
            _, secret = tenants.create_key(
                session,
                tenant_id=tenant.id,
                name=args.name,
                scopes=[s.strip() for s in args.scopes.split(",") if s.strip()],
                actor="cli",
            )
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
    from worker.retention import purge_due, purge_erased_pixels, purge_references_due, sweep_unreferenced

    ledger_settings = load_settings().ledger
    database = Database(ledger_settings.database_url)
    store, grace = ArtifactStore(ledger_settings.artifacts_dir), timedelta(hours=ledger_settings.purge_grace_hours)
    try:
        purged = purge_due(database, store, grace=grace)
        references = purge_references_due(database, store, grace=grace)
        pixels = purge_erased_pixels(database, store)
        swept = sweep_unreferenced(database, store, grace=timedelta(hours=ledger_settings.artifact_sweep_grace_hours))
    finally:
        database.dispose()
    for p in purged:
        print(f"purged model {p.model_id} version {p.number} (sha256 {p.sha256})")
    for r in references:
        print(f"purged the superseded audit reference scores {r.storage_key} of model {r.model_id}")
    for d in pixels:
        print(f"purged the pixels of {len(d.rows)} erased sample(s) from dataset {d.dataset_id}")
    for s in swept:
        print(f"swept {s.key}: no ledger row references it")
    print(
        f"ltu purge: {len(purged)} version(s) and {len(references)} reference set(s) purged "
        f"(grace {ledger_settings.purge_grace_hours:g} h), erased pixels of {sum(len(d.rows) for d in pixels)} "
        f"sample(s) purged, {len(swept)} unreferenced artifact(s) swept "
        f"(grace {ledger_settings.artifact_sweep_grace_hours:g} h)",
        file=sys.stderr,
    )
    return 0


def _secret_rotate(args: argparse.Namespace) -> int:
    from ledger import secret_check
    from ledger.db import Database
    from ledger.errors import ConfigError, LedgerError
    from ltu_settings.base import read_secret_file

    settings = load_settings()
    try:
        new = read_secret_file("--new-key-file", args.new_key_file)
        settings.replace(secret_key=new)  # the strength rules of LTU_SECRET_KEY
    except ConfigError as exc:
        raise CLIError(f"--new-key-file: {exc}") from None
    if new == settings.ledger.secret_key:
        raise CLIError("--new-key-file holds the current secret")
    database = Database(settings.ledger.database_url)
    try:
        with database.transaction() as session:
            rewrapped, adopted = secret_check.rotate(session, current=settings.ledger.secret_key, new=new, actor="cli")
    except (ConfigError, LedgerError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        database.dispose()
    print(
        f"ltu secret rotate: {rewrapped} tenant key(s) re-wrapped ({adopted} adopting hashes made before tenant keys); "
        f"the ledger now expects the secret in {args.new_key_file}: set LTU_SECRET_KEY_FILE to it in every process "
        "and restart them",
        file=sys.stderr,
    )
    return 0


def _secret_shred_tenant(args: argparse.Namespace) -> int:
    from ledger import tenant_keys, tenants
    from ledger.db import Database
    from ledger.errors import LedgerError

    if args.confirm != args.tenant:
        raise CLIError("--confirm must repeat the tenant's name: destroying its key cannot be undone")
    settings = load_settings()
    database = Database(settings.ledger.database_url)
    try:
        with database.transaction() as session:
            tenant = tenants.get_tenant_by_name(session, name=args.tenant)
            if tenant is None:
                raise CLIError(f"no tenant named {args.tenant!r}")
            destroyed = tenant_keys.destroy(
                session, tenant_id=tenant.id, secret=settings.ledger.secret_key, actor="cli"
            )
    except LedgerError as exc:
        raise CLIError(str(exc)) from None
    finally:
        database.dispose()
    legacy = (
        " It was a legacy key (the server secret of migration 0011's time): rotate the server secret too, "
        "or its hashes stay linkable by whoever holds that secret."
        if destroyed.origin == tenant_keys.LEGACY
        else ""
    )
    print(
        f"ltu secret shred-tenant: key {destroyed.id} of tenant {args.tenant!r} destroyed. Subject ids can no "
        "longer be matched against anything it keyed (its datasets' subjects are not found by later erasures); "
        f"the tenant's next keyed operation gets a new key and its webhook endpoints new signing secrets.{legacy}",
        file=sys.stderr,
    )
    return 0
