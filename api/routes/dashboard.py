"""The compliance dashboard: server-rendered pages for keys with the audit scope (no JavaScript).

Sign-in: the login form takes an API key with the audit (or admin) scope and sets an HttpOnly,
SameSite=Strict session cookie that holds the key's id, an expiry and an HMAC of both under the
server secret, never the key itself; revoking the key ends the session. A Bearer header works
too (scripts, screenshots).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials

from api import plots
from api.deps import SessionDep, SettingsDep, SignerDep, bearer
from api.errors import ProblemError
from api.routes.common import PROBLEM, problems
from api.schemas import Deadline
from ledger import certificates, reports, tenants
from ledger.tables import ACTIVE_STATUSES, utcnow
from ledger.tenants import LiveKey

router = APIRouter(prefix="/dashboard", tags=["dashboard"])

COOKIE = "ltu_dashboard"
SESSION_SECONDS = 8 * 3600
LOGIN = "/dashboard/login"

HTML = {"content": {"text/html": {}}}
TO_SIGN_IN = {303: {"description": f"Neither a Bearer key nor a live session cookie: to the sign-in form ({LOGIN})."}}
# A page answers HTML; a Bearer key that is wrong, or lacks the audit scope, a problem like every API route.
PAGE = {**problems(404), **TO_SIGN_IN, 200: {**HTML, "description": "The page."}}


def session_token(secret: str, key_id: str, expires: int) -> str:
    """`<key id>.<expiry>.<HMAC>`: proves a login with that key until the expiry (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"dashboard:{key_id}:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{key_id}.{expires}.{mac}"


def dashboard_key(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> LiveKey | None:
    """The signed-in key (Bearer header, else session cookie), or None; 403 without the audit scope.

    No credentials send a browser to the sign-in form (the pages redirect on None), but a Bearer key
    that is wrong is a script's error: 401, as on every API route.
    """
    if credentials is not None:
        key = tenants.authenticate(session, secret=credentials.credentials)
        if key is None:
            raise ProblemError(
                401,
                "invalid or revoked API key",
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="ltu"'},
            )
    else:
        key = _cookie_key(session, settings.ledger.secret_key, request.cookies.get(COOKIE, ""))
    if key is not None and not {"audit", "admin"} & set(key.scopes):
        raise ProblemError(403, "the dashboard needs an API key with the audit scope", code="insufficient_scope")
    return key


# What session_token makes, in ASCII and bounded: anything else in the cookie was not made here. (str.isdigit
# admits "²", which int() refuses, and compare_digest refuses non-ASCII text: either would be a 500.)
SESSION_TOKEN = re.compile(r"(?P<key_id>[A-Za-z0-9-]{1,64})\.(?P<expires>[0-9]{1,12})\.[0-9a-f]{64}")


def _cookie_key(session, secret: str, token: str) -> LiveKey | None:
    match = SESSION_TOKEN.fullmatch(token)
    if match is None:
        return None
    key_id, expires = match["key_id"], int(match["expires"])
    if expires < time.time() or not hmac.compare_digest(token, session_token(secret, key_id, expires)):
        return None
    return tenants.get_live_key(session, key_id=key_id)


DashboardKey = Annotated[LiveKey | None, Depends(dashboard_key)]


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    """The sign-in form."""
    return request.app.state.templates.TemplateResponse(request, "login.html", {"error": None})


@router.post(
    "/login",
    status_code=303,
    response_class=Response,
    responses={
        303: {"description": f"Signed in: the session cookie {COOKIE} is set, on to /dashboard."},
        400: PROBLEM,
        401: {**HTML, "description": "The sign-in form again: the key is unknown or revoked."},
        403: {**HTML, "description": "The sign-in form again: the key lacks the audit scope."},
        413: PROBLEM,
        422: PROBLEM,
    },
)
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    api_key: Annotated[str, Form(min_length=1, max_length=500)],
) -> Response:
    """Check the key and start a session (303 to the dashboard), or show the form again with why."""
    key = tenants.authenticate(session, secret=api_key.strip())
    error, status = None, 303
    if key is None:
        error, status = "This API key is unknown or revoked.", 401
    elif not {"audit", "admin"} & set(key.scopes):
        error, status = "This API key lacks the audit scope the dashboard needs.", 403
    if error:
        return request.app.state.templates.TemplateResponse(request, "login.html", {"error": error}, status_code=status)
    response = RedirectResponse("/dashboard", status_code=303)
    expires = int(time.time()) + SESSION_SECONDS
    response.set_cookie(
        COOKIE,
        session_token(settings.ledger.secret_key, key.id, expires),
        max_age=SESSION_SECONDS,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post(
    "/logout",
    status_code=303,
    response_class=Response,
    responses={303: {"description": f"The session cookie is cleared; on to {LOGIN}."}},
)
def logout() -> Response:
    """End the session."""
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("", response_class=Response, responses=PAGE)
def overview(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: DashboardKey,
    deadline: Deadline | None = None,
    cursor: str | None = None,
) -> Response:
    """Figures, the overdue list, and the requests with status, progress and deadline."""
    if key is None:
        return RedirectResponse(LOGIN, status_code=303)
    now = utcnow()
    due_soon = timedelta(days=settings.api.due_soon_days)
    view = reports.overview(
        session, tenant_id=key.tenant_id, now=now, due_soon=due_soon, deadline=deadline, cursor=cursor
    )
    return request.app.state.templates.TemplateResponse(
        request,
        "overview.html",
        {
            "tenant": view.tenant,
            "overall": view.overall,
            "per_model": view.per_model,
            "names": view.model_names,
            "page": view.page,
            "overdue": view.overdue,
            "shown": deadline,
            "now": now,
            "active": ACTIVE_STATUSES,
            "due_soon_days": settings.api.due_soon_days,
        },
    )


@router.get("/requests/{request_id}", response_class=Response, responses=PAGE)
def request_page(
    request_id: str, request: Request, session: SessionDep, settings: SettingsDep, key: DashboardKey
) -> Response:
    """One request: lifecycle, deadline, member-score plots before and after, accuracy, audit trail."""
    if key is None:
        return RedirectResponse(LOGIN, status_code=303)
    report = reports.request_report(session, tenant_id=key.tenant_id, request_id=request_id)
    erasure = report.request
    figures = {}
    if erasure.details is not None:
        before, after = erasure.details.scores.before, erasure.details.scores.after
        x_range = plots.score_range(before, after)
        figures = {
            "before": plots.score_plot(before, phase="before", x_range=x_range),
            "after": plots.score_plot(after, phase="after", x_range=x_range),
            "ranks": plots.rank_plot(before, after),
        }
    if erasure.metrics_before and erasure.metrics_after:
        figures["metrics"] = plots.metrics_plot(erasure.metrics_before, erasure.metrics_after)
    return request.app.state.templates.TemplateResponse(
        request,
        "request.html",
        {
            "r": erasure,
            "model": report.model,
            "events": report.events,
            "figures": figures,
            "now": utcnow(),
            "active": ACTIVE_STATUSES,
            "due_soon_days": settings.api.due_soon_days,
        },
    )


@router.get(
    "/requests/{request_id}/certificate",
    response_class=Response,
    responses={
        **PAGE,
        **problems(409, 503),
        200: {"content": {"application/json": {}}, "description": "The signed certificate, as a download."},
    },
)
def certificate(request_id: str, session: SessionDep, key: DashboardKey, signer: SignerDep) -> Response:
    """The request's signed erasure certificate, for download from the page."""
    if key is None:
        return RedirectResponse(LOGIN, status_code=303)
    content = certificates.certificate_content(session, tenant_id=key.tenant_id, request_id=request_id)
    return Response(
        signer.sign(content),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="erasure-certificate-{request_id}.json"'},
    )
