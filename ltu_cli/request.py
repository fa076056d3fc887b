"""Deletion requests against a running service over HTTP: `ltu request {submit,status,wait,list}`.

Environment: LTU_URL and LTU_API_KEY (else LTU_HOME/admin.key) unless --url / --api-key are given.
Named `request` after the command (not `requests`, which would shadow the HTTP library of that name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from ltu_cli.common import CLIError, build_client, call, client_options, parse_params, print_idempotency_key


def register(sub: argparse._SubParsersAction) -> None:
    """Add request {submit,status,wait,list}."""
    p = sub.add_parser("request", help="deletion requests against a running service (HTTP client)")
    req = p.add_subparsers(dest="request_command", required=True, metavar="ACTION")
    options = client_options()

    r = req.add_parser("submit", parents=[options], help="submit an erasure request (202)")
    r.add_argument("--model", required=True, help="model id")
    target = r.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--subject", action="append", dest="subjects", metavar="SUBJECT_ID", help="data subject id (repeatable)"
    )
    target.add_argument("--sample", action="append", dest="samples", metavar="SAMPLE_ID", help="sample id (repeatable)")
    r.add_argument("--method", default=None, help="unlearning method (default ltu)")
    r.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter; VALUE is JSON or text (repeatable)",
    )
    r.add_argument(
        "--idempotency-key",
        default=None,
        help="resubmitting with the same key returns the same request (default: a new key, printed on stderr)",
    )
    r.add_argument("--wait", action="store_true", help="wait until the request finishes")
    r.set_defaults(handler=_request_submit)

    r = req.add_parser("status", parents=[options], help="show a request")
    r.add_argument("request_id")
    r.set_defaults(handler=_request_status)

    r = req.add_parser("wait", parents=[options], help="wait for a request to finish (progress bar)")
    r.add_argument("request_id")
    r.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    r.set_defaults(handler=_request_wait)

    r = req.add_parser("list", parents=[options], help="list requests, newest first")
    r.add_argument(
        "--status", default=None, choices=("received", "queued", "running", "completed", "failed", "cancelled")
    )
    r.add_argument("--model", default=None, help="only this model's requests")
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--cursor", default=None, help="next_cursor of a previous page")
    r.set_defaults(handler=_request_list)


def wait_with_bar(client, request_id: str, *, timeout: float):
    """Poll a request with a tqdm bar per phase; returns the finished request."""
    from tqdm import tqdm

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
            state["bar"] = tqdm(
                total=total,
                desc=f"{label:<28}",
                unit="step",
                leave=False,
                file=sys.stderr,
                bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}]",
            )
            state["phase"] = label
        bar = state["bar"]
        if bar.total != total:
            bar.total = total
        bar.n = min(int(progress.get("step") or 0), total)
        bar.refresh()

    try:
        return call(client.wait, request_id, timeout=timeout, poll=0.5, on_update=update)
    except TimeoutError as exc:
        raise CLIError(str(exc)) from None
    finally:
        if state["bar"] is not None:
            state["bar"].close()


def _print_request(request, as_json: bool) -> None:
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
    with build_client(args) as client:
        request = call(
            client.submit_deletion,
            args.model,
            subject_ids=args.subjects,
            sample_ids=args.samples,
            method=args.method,
            parameters=parse_params(args.param),
            idempotency_key=args.idempotency_key,
        )
        print_idempotency_key(request)
        if args.wait:
            request = dataclasses.replace(
                wait_with_bar(client, request.id, timeout=3600.0), idempotency_key=request.idempotency_key
            )
    _print_request(request, args.json)
    return 0 if request.status != "failed" else 1


def _request_status(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        _print_request(call(client.get_request, args.request_id), args.json)
    return 0


def _request_wait(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        request = wait_with_bar(client, args.request_id, timeout=args.timeout)
    _print_request(request, args.json)
    return 0 if request.status == "completed" else 1


def _request_list(args: argparse.Namespace) -> int:
    with build_client(args) as client:
        page = call(client.list_requests, status=args.status, model_id=args.model, cursor=args.cursor, limit=args.limit)
    if args.json:
        print(
            json.dumps(
                {"items": [dataclasses.asdict(r) for r in page.items], "next_cursor": page.next_cursor},
                default=str,
                indent=2,
            )
        )
        return 0
    for r in page.items:
        received = r.received_at.strftime("%Y-%m-%d %H:%M:%S") if r.received_at else "?"
        version = f"v{r.result_version}" if r.result_version else ""
        print(f"{r.id}  {received}  {r.status:<9}  model {r.model_id}  {r.method}  {version}")
    if page.next_cursor:
        print(f"(more: --cursor {page.next_cursor})")
    return 0
