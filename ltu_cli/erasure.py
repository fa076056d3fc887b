"""Erasures against a running service over HTTP: a data subject erased from every model and dataset of
the tenant (`ltu erasure {submit,status,wait,list,certificate}`), and where a subject's data is
(`ltu subject locations`).

Environment as for `ltu request`: LTU_URL and LTU_API_KEY (else LTU_HOME/admin.key).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ltu_cli.common import CLIError, build_client, call, client_options, parse_params, print_idempotency_key

STATUSES = ("received", "running", "completed", "failed", "cancelled")


def register(sub: argparse._SubParsersAction) -> None:
    """Add erasure {submit,status,wait,list,certificate} and subject locations."""
    options = client_options()
    p = sub.add_parser("erasure", help="erase data subjects from every model and dataset (HTTP client)")
    actions = p.add_subparsers(dest="erasure_command", required=True, metavar="ACTION")

    e = actions.add_parser("submit", parents=[options], help="submit an erasure (202)")
    e.add_argument(
        "--subject", action="append", dest="subjects", required=True, metavar="ID", help="data subject (repeatable)"
    )
    e.add_argument(
        "--model", action="append", dest="models", metavar="ID", help="only these models (repeatable; default all)"
    )
    e.add_argument(
        "--dataset",
        action="append",
        dest="datasets",
        metavar="ID",
        help="only these datasets (repeatable; default all)",
    )
    e.add_argument("--method", default=None, help="unlearning method (default the service's)")
    e.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter; VALUE is JSON or text"
    )
    e.add_argument(
        "--idempotency-key",
        default=None,
        help="resubmitting with the same key returns the same erasure (default: a new key, printed on stderr)",
    )
    e.add_argument("--wait", action="store_true", help="wait until the erasure finishes")
    e.set_defaults(handler=_submit)

    e = actions.add_parser("status", parents=[options], help="show an erasure")
    e.add_argument("erasure_id")
    e.set_defaults(handler=_status)

    e = actions.add_parser("wait", parents=[options], help="wait for an erasure to finish")
    e.add_argument("erasure_id")
    e.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    e.set_defaults(handler=_wait)

    e = actions.add_parser("list", parents=[options], help="list erasures, newest first")
    e.add_argument("--status", default=None, choices=STATUSES)
    e.add_argument("--limit", type=int, default=20)
    e.add_argument("--cursor", default=None, help="next_cursor of a previous page")
    e.set_defaults(handler=_list)

    e = actions.add_parser("certificate", parents=[options], help="the signed certificate of a completed erasure")
    e.add_argument("erasure_id")
    e.add_argument("--out", type=Path, default=None, metavar="FILE", help="write it here (default stdout)")
    e.set_defaults(handler=_certificate)

    p = sub.add_parser("subject", help="a data subject's data across datasets and models (HTTP client)")
    actions = p.add_subparsers(dest="subject_command", required=True, metavar="ACTION")
    e = actions.add_parser("locations", parents=[options], help="where a subject's samples are, and what erased them")
    e.add_argument("subject_id")
    e.set_defaults(handler=_locations)


def _print_erasure(erasure, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(erasure), default=str, indent=2))
        return
    due = f"  due {erasure.due_at:%Y-%m-%d}" if erasure.due_at else ""
    print(
        f"{erasure.id}  {erasure.status}  {erasure.subject_count} subjects ({erasure.subjects_not_found} found nowhere){due}"
    )
    for request in erasure.requests:
        print(f"  model {request['model_id']}  request {request['request_id']}  {_request_state(request)}")
    for purge in erasure.dataset_purge:
        print(f"  dataset {purge['dataset_id']}  purged {purge['purged_samples']}/{purge['samples']} samples")


def _request_state(request: dict[str, Any]) -> str:
    progress = request.get("progress") or {}
    if request["status"] == "running" and progress.get("phase"):
        return f"running: {progress['phase']} {progress.get('step')}/{progress.get('total')}"
    if request.get("result_version") is not None:
        return f"{request['status']} → version {request['result_version']}"
    return request["status"]


def _wait_printing(client, erasure_id: str, *, timeout: float):
    """Wait for the erasure, a line on stderr whenever its state changes."""
    seen: list[tuple] = []

    def update(erasure) -> None:
        state = (erasure.status, *(_request_state(r) for r in erasure.requests))
        if not seen or seen[-1] != state:
            seen.append(state)
            print(f"{erasure.id}  " + "  ".join(state), file=sys.stderr)

    try:
        return call(client.wait_erasure, erasure_id, timeout=timeout, on_update=update)
    except TimeoutError as exc:
        raise CLIError(str(exc)) from None


def _submit(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        erasure = call(
            client.submit_erasure,
            args.subjects,
            model_ids=args.models,
            dataset_ids=args.datasets,
            method=args.method,
            parameters=parse_params(args.param) or None,
            idempotency_key=args.idempotency_key,
        )
        print_idempotency_key(erasure)
        if args.wait:
            finished = _wait_printing(client, erasure.id, timeout=3600.0)
            erasure = dataclasses.replace(finished, idempotency_key=erasure.idempotency_key)
    _print_erasure(erasure, args.json)
    return 0 if erasure.status != "failed" else 1


def _status(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        _print_erasure(call(client.get_erasure, args.erasure_id), args.json)
    return 0


def _wait(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        erasure = _wait_printing(client, args.erasure_id, timeout=args.timeout)
    _print_erasure(erasure, args.json)
    return 0 if erasure.status == "completed" else 1


def _list(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        page = call(client.list_erasures, status=args.status, cursor=args.cursor, limit=args.limit)
    if args.json:
        items = [dataclasses.asdict(e) for e in page.items]
        print(json.dumps({"items": items, "next_cursor": page.next_cursor}, default=str, indent=2))
        return 0
    for e in page.items:
        received = f"{e.received_at:%Y-%m-%d %H:%M:%S}" if e.received_at else "?"
        print(f"{e.id}  {received}  {e.status:<9}  {e.subject_count} subjects  {len(e.requests)} models")
    if page.next_cursor:
        print(f"(more: --cursor {page.next_cursor})")
    return 0


def _certificate(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        document = call(client.erasure_certificate, args.erasure_id)
    if args.out is None:
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
        return 0
    try:
        args.out.write_bytes(document)
    except OSError as exc:
        raise CLIError(str(exc)) from None
    print(f"{args.out}: {len(document)} bytes; check it with: ltu certificate verify {args.out}", file=sys.stderr)
    return 0


def _locations(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        locations = call(client.subject_locations, args.subject_id)
    if args.json:
        print(json.dumps(locations, indent=2))
        return 0
    print(f"subject {locations['subject_hash']}")
    for d in locations["datasets"]:
        print(
            f"  dataset {d['dataset_id']}  {d['samples']} samples, {d['erased_samples']} erased, "
            f"{d['purged_samples']} purged"
        )
    for m in locations["models"]:
        erased = f"erased in version {m['erased_in_version']}" if m["erased_in_version"] is not None else "not erased"
        holding = ", ".join(str(v) for v in m["versions_holding"]) or "none"
        print(
            f"  model {m['model_id']} (dataset {m['dataset_id']})  current version {m['current_version']}; "
            f"{erased}; versions holding the subject: {holding}"
        )
    if not locations["datasets"] and not locations["models"]:
        print("  found nowhere")
    return 0
