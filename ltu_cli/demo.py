"""The end-to-end demo, `ltu demo`: an embedded service (SQLite + in-process runner under
LTU_HOME), two ResNet-18s trained on scikit-learn digits (two seeds), one data subject erased from
both with one erasure over HTTP, and the outcome, the combined certificate and the dataset purge
printed for a person to read. Torch, uvicorn and the service load only when it runs."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from ledger.records import Metrics, Verification, from_json
from ltu_cli.common import CLIError, call, load_settings, parse_params, redact
from ltu_cli.request import wait_with_bar
from ltu_cli.serve import build_app, local_admin_key, migrate_db

DEMO_SUBJECT_SAMPLES = 4  # the demo erases a subject with exactly this many samples, all in train
DEMO_SEEDS = (0, 1)  # two models of one recipe on one dataset: one erasure reaches both


def register(sub: argparse._SubParsersAction) -> None:
    """Add demo."""
    p = sub.add_parser(
        "demo", help="end-to-end demo: train two models on sklearn digits, erase one person from both over HTTP"
    )
    p.add_argument("--epochs", type=int, default=20, help="training epochs of each demo model (default 20)")
    p.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier (default 0.25)")
    p.add_argument("--method", default=None, help="unlearning method (default: the service's, ltu)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--port", type=int, default=0, help="port of the demo server (default: any free port)")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    """Embedded service + digits + one erasure of a person from two models over HTTP, printed for a person to read."""
    started = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: digits ship with scikit-learn
    settings = load_settings()
    key = local_admin_key(settings)
    if key is None:
        raise CLIError("set LTU_ADMIN_API_KEY: the demo needs an admin key for a non-embedded ledger")
    # Tiny 8×8 models gain nothing from intra-op threads, and on a shared CPU spinning OpenMP
    # threads slow training down by an order of magnitude: one thread unless told otherwise.
    settings = settings.replace(broker_url=None, admin_api_key=key, torch_threads=settings.worker.torch_threads or 1)
    import torch

    torch.set_num_threads(settings.worker.torch_threads)
    migrate_db(settings)
    app = build_app(settings, embedded_runner=True)
    server, thread, url = start_server(app, args.port)
    print(
        f"LTU erasure demo: state in {settings.ledger.home} (ledger {redact(settings.ledger.database_url)}, "
        "in-process runner)"
    )
    print(f"service   {url}  (OpenAPI: {url}/docs)")
    try:
        from ltu_client import Client

        with Client(url, key, timeout=120.0) as client:
            _demo_scenario(client, args, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    print(
        f"\ndone in {time.monotonic() - started:.0f} s. The state stays in {settings.ledger.home}: "
        "`ltu serve` shows the same models, requests and audit events."
    )
    return 0


def start_server(app, port: int):
    """Run uvicorn in a background thread; returns (server, thread, base URL) once it listens."""
    import uvicorn

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
    import numpy as np

    from ltu_core.data import load_digits, pack_dataset, write_dataset
    from ltu_core.models import ArchConfig, build_model, predict, save_model
    from ltu_core.train import TrainRecipe, train_model

    work = settings.ledger.home / "demo" / time.strftime("%Y%m%d-%H%M%S")  # upload files and the downloaded version
    work.mkdir(parents=True, exist_ok=True)
    dataset = load_digits()
    train = dataset.split_indices("train")
    subjects = np.unique(dataset.subject_ids)
    write_dataset(dataset, work / "digits")
    archive = pack_dataset(work / "digits", work / "digits.tar")
    registered = call(client.register_dataset, archive, name="digits (scikit-learn)")
    print(
        f"\n[1/5] dataset  scikit-learn digits: {len(dataset):,} images 1×8×8, {dataset.num_classes} classes, "
        f"{len(subjects)} data subjects; {len(train):,} train / {len(dataset.split_indices('test'))} test / "
        f"{len(dataset.split_indices('holdout'))} holdout"
    )
    print(f"      registered dataset {registered.id} (archive sha256 {registered.archive_sha256[:16]}…)")

    arch = ArchConfig("resnet18", num_classes=dataset.num_classes, in_chans=1, img_size=8, width=args.width)
    recipe = TrainRecipe(epochs=args.epochs, batch_size=64, lr=0.05)
    models = {}  # registered model id → the trained torch model
    for seed in DEMO_SEEDS:
        model = build_model(arch, seed=seed)
        t0 = time.monotonic()
        train_model(model, dataset.view(train), recipe, seed=seed)
        test_acc = predict(model, dataset.view(dataset.split_indices("test"))).accuracy()
        weights = save_model(model, arch, work / f"digits-resnet18-seed{seed}.safetensors")
        registered_model = call(
            client.register_model,
            weights,
            dataset_id=registered.id,
            name=f"digits-resnet18-seed{seed}",
            recipe={"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr},
        )
        v1 = call(client.get_version, registered_model.id, 1)
        print(
            f"[2/5] model    ResNet-18 (width {args.width}, 3×3 stem, seed {seed}) trained {recipe.epochs} epochs in "
            f"{time.monotonic() - t0:.0f} s: test accuracy {test_acc:.1f} %"
        )
        print(f"      registered model {registered_model.id}, version 1 sha256 {v1.sha256[:16]}…")
        models[registered_model.id] = model

    for model_id in models:
        _wait_for_references(client, model_id)

    subject, exposure = _most_exposed_subject(next(iter(models.values())), dataset)
    print(
        f"      most exposed data subject: {subject}, whose {DEMO_SUBJECT_SAMPLES} training samples' margins rank "
        f"{exposure:.2f} among never-seen digits (0.50 would look unseen) in the first model"
    )
    print(f"      where is {subject}? {_locations_line(client, subject)}")
    erasure = call(
        client.submit_erasure,
        [subject],
        method=args.method,
        parameters=parse_params(args.param),
        idempotency_key=f"demo-{registered.id}",
    )
    print(
        f"[3/5] erasure  POST /v1/erasures  subject_ids=[{subject!r}]  →  202 Accepted, "
        f"Location /v1/erasures/{erasure.id}"
    )
    print(
        f"      {len(erasure.requests)} models trained on the subject, one deletion request each; "
        f"due {erasure.due_at:%Y-%m-%d} (GDPR: one calendar month after receipt)"
    )
    print("[4/5] waiting  (polling GET /v1/deletion-requests/{id} of each model)")
    done = [wait_with_bar(client, r["request_id"], timeout=900.0) for r in erasure.requests]
    erasure = call(client.get_erasure, erasure.id)
    print(f"[5/5] result   {erasure.status}" + "".join(f"  ({r.error})" for r in done if r.error))
    for request in done:
        print(f"\n  ── model {request.model_id} ──")
        _print_outcome(client, request, work)
    _purge_now(settings)
    _print_erasure(client, erasure, subject)


def _purge_now(settings) -> None:
    """The purge pass the service runs every LTU_PURGE_INTERVAL (and `ltu purge` on demand), run now: both
    models erased the person, so no model needs their pixels and the stored dataset loses them."""
    from ledger.artifacts import ArtifactStore
    from ledger.db import Database
    from worker.retention import purge_erased_pixels

    database = Database(settings.ledger.database_url)
    try:
        purged = purge_erased_pixels(database, ArtifactStore(settings.ledger.artifacts_dir))
    finally:
        database.dispose()
    rows = sum(len(p.rows) for p in purged)
    print(
        f"\n  purge pass      (as `ltu purge`): {rows} erased sample(s) tombstoned in {len(purged)} stored dataset(s)"
    )


def _locations_line(client, subject: str) -> str:
    """POST /v1/subjects/locations in one line: each model and the stored versions that hold the subject."""
    found = call(client.subject_locations, subject)
    if not found["models"]:
        return "in no model"
    return "; ".join(
        f"model {m['model_id'][:8]}… versions {m['versions_holding']} hold them"
        + (f", erased in version {m['erased_in_version']}" if m["erased_in_version"] else "")
        for m in found["models"]
    )


def _print_erasure(client, erasure, subject: str) -> None:
    """The combined certificate, checked against the service's public key, and the dataset purge."""
    from ltu_client import CertificateInvalid, load_public_key, verify_certificate

    print("\n  certificate of the erasure (GET /v1/erasures/{id}/certificate)")
    if erasure.status != "completed":
        print(f"    none: the erasure is {erasure.status}")
        return
    document = call(client.erasure_certificate, erasure.id)
    try:
        content = verify_certificate(document, load_public_key(json.dumps(call(client.certificate_key))))
    except CertificateInvalid as exc:
        raise CLIError(f"the erasure certificate does not verify: {exc}") from None
    summary = content["erasure"]
    print(
        f"    signature valid (Ed25519, key {json.loads(document)['signature']['key_id'][:12]}…); "
        f"{summary['subject_count']} subject(s), completed {summary['completed_at']}, "
        f"on time: {'yes' if summary['completed_on_time'] else 'NO'}"
    )
    for part in content["models"]:
        model, verification = part["model"], part["verification"]
        print(
            f"    model {model['id']}  version {model['base_version']['number']} → {model['new_version']['number']} "
            f"(sha256 {model['new_version']['sha256'][:16]}…), {part['erased_samples']['count']} samples erased, "
            f"verification {'passed' if verification['passed'] else 'FAILED'}"
        )
    for purge in content["dataset_purge"]:
        state = "purged" if purge["purged_samples"] == purge["samples"] else "not purged yet"
        print(
            f"  dataset purge   dataset {purge['dataset_id']}: {purge['purged_samples']} of the subject's "
            f"{purge['samples']} samples removed from the stored dataset ({state})"
        )
    print(f"  where is {subject} now? {_locations_line(client, subject)}")


def _wait_for_references(client, model_id: str) -> None:
    """Wait for the reference models the service queued at registration: the audit's likelihood-ratio tier.

    A request does not have to wait (it would be audited by the rank tier and say so); the demo
    waits to show the stronger tier.
    """
    t0 = time.monotonic()
    status = call(client.get_audit_references, model_id)
    if status.latest is None:
        print("      no reference models queued (LTU_AUDIT_REFERENCE_MODELS=0): the audit uses the rank tier")
        return
    count = status.latest["count"]
    print(f"      audit    the service trains {count} reference models on halves of the training data…", flush=True)

    shown = [0]

    def show(update) -> None:
        step = ((update.latest or {}).get("progress") or {}).get("step", 0)
        if step > shown[0]:
            shown[0] = step
            print(f"      audit    reference model {step}/{count} trained ({time.monotonic() - t0:.0f} s)", flush=True)

    status = call(client.wait_audit_references, model_id, timeout=900.0, poll=0.5, on_update=show)
    print(
        f"      audit    {count} reference models {status.audit_status} in {time.monotonic() - t0:.0f} s: "
        f"verdicts use the {status.audit_tier.replace('_', '-')} tier"
    )


def _most_exposed_subject(model, dataset) -> tuple[str, float]:
    """The subject (all samples in train) whose margins rank highest among holdout samples.

    The request a privacy team worries about most: the model memorised this person's samples
    the most, so a membership-inference attacker singles them out.
    """
    import numpy as np

    from ltu_core.audit import margin, mean_percentile_rank
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
    events = call(client.audit_events, request_id=request.id)
    start = request.received_at
    print("\n  status timeline")
    for e in events:
        if e.action.startswith("deletion_request."):
            extra = f"attempt {e.data['attempt']}" if "attempt" in e.data else ""
            print(f"    +{(e.occurred_at - start).total_seconds():6.1f} s  {e.action.split('.', 1)[1]:<10} {extra}")
    # The API's JSON is the ledger's typed record (ledger.records): read it back as one.
    before, after = (from_json(Metrics, m) if m else None for m in (request.metrics_before, request.metrics_after))
    if before and after:
        print("\n  metrics (%)                         before    after")
        rows = [
            ("UA  forget-set error (↑ forgets)", "ua"),
            ("RA  retained-set accuracy", "ra"),
            ("TA  test accuracy", "ta"),
            ("MIA forget called non-member (↑)", "mia"),
        ]
        for label, k in rows:
            print(f"    {label:<33} {_pct(getattr(before, k))}  {_pct(getattr(after, k))}")
    verification = from_json(Verification, request.verification) if request.verification else None
    for when, v in (("before", verification and verification.before), ("after", verification and verification.after)):
        if v:
            subject = v.subjects[0] if v.subjects else None
            p = f"subject p = {subject.adjusted_remembered:.4f}, " if subject else ""
            print(
                f"  audit {when:<6}  {v.outcome.replace('_', ' ').upper()}: {v.tier.replace('_', '-')} tier, "
                f"{p}α = {v.alpha}, n = {v.n_forget} samples of {v.n_subjects} subject(s) against {v.n_control} "
                f"D_audit controls{' (over-forgetting flagged)' if v.over_forgetting else ''}; TA {v.test_accuracy:.1f} %"
            )
            if when == "after" and v.calibration:
                c = v.calibration
                power = f", power on the original {100 * c.power:.0f} %" if c.power is not None else ""
                print(
                    f"                 measured at n = {c.n}: false-failure rate {100 * c.false_failure_rate:.1f} % "
                    f"[{100 * c.ci_low:.1f}, {100 * c.ci_high:.1f}]{power} (calibration table {c.table_sha256[:12]}…)"
                )
            if when == "after" and v.tier_reason:
                print(f"                 tier: {v.tier_reason}")
    if verification and verification.fallback:
        print(
            f"  fallback        {verification.fallback.reason}: the published model was retrained from scratch on D_r"
        )
    if request.result_version is not None:
        path = call(
            client.download_weights,
            request.model_id,
            request.result_version,
            work / f"model-{request.model_id[:8]}-v{request.result_version}.safetensors",
        )
        print(
            f"\n  new version     {request.result_version} (parent {request.base_version}), "
            f"sha256 {request.result_sha256}"
        )
        print(f"                  downloaded to {path}, sha256 checked")
        samples = call(client.request_samples, request.id)
        # The dataset records the first request that erased a sample; another model's may have come first.
        erased = [s for s in samples if s.erased_by_request_id is not None]
        splits = ", ".join(
            f"{sum(s.split == sp for s in erased)} {sp}"
            for sp in ("train", "test", "holdout")
            if any(s.split == sp for s in erased)
        )
        print(
            f"  erased samples  {len(erased)} of the subject's samples are marked erased ({splits}); "
            "no later run reads them"
        )
    print("\n  audit trail of the request")
    for e in events:
        data = {k: v for k, v in e.data.items() if k not in ("subject_hashes",)}
        print(
            f"    {e.occurred_at:%H:%M:%S.%f}"[:-3]
            + f"  {e.action:<32} {e.actor[:20]:<20} {json.dumps(data, default=str)[:90]}"
        )


def _pct(value) -> str:
    return f"{value:7.1f}" if isinstance(value, (int, float)) else "      –"
