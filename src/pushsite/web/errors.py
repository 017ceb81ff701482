"""The JSON error handler of the control plane: one shape for every error the API answers.

    {"ok": false, "error": "<a sentence for a person>", "status": <HTTP status>}

A PushsiteError answers with its class's `http_status` and its message (a full disk, DiskFull:
507 Insufficient Storage, also for an ENOSPC no backend translated). A malformed request
(a bad query parameter, a JSON body of the wrong shape) is a 400 in the same shape, and so is
any other HTTP error the framework raises (an unknown path, a wrong method). Anything else is a
bug: a plain 500 whose body says so, with the traceback only when the server runs with --debug.
"""

from __future__ import annotations

import traceback
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pushsite.diskspace import is_full
from pushsite.errors import DiskFull, PushsiteError

DEBUG_KEY = "pushsite.debug"  # set in the ASGI scope by `with_debug_flag`


def error_body(message: str, status: int) -> dict[str, Any]:
    """The one error shape (see the module docstring)."""
    return {"ok": False, "error": message, "status": status}


def error_response(exc: PushsiteError) -> JSONResponse:
    """The JSON answer to a PushsiteError; a 401 also says how to authenticate."""
    status = exc.http_status
    headers = {"WWW-Authenticate": 'Bearer realm="pushsite"'} if status == 401 else None
    return JSONResponse(error_body(exc.message, status), status_code=status, headers=headers)


async def _pushsite_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PushsiteError)
    return error_response(exc)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for problem in exc.errors()[:5]:
        if problem.get("type") == "json_invalid":
            parts.append("the request body is not valid JSON "
                         f"({problem.get('ctx', {}).get('error', 'cannot parse it')})")
            continue
        if problem.get("type") == "missing" and tuple(problem.get("loc", ())) == ("body",):
            parts.append("the request body is missing; send a JSON object")
            continue
        where = [str(p) for p in problem.get("loc", ())]
        place = where[0] if where else "request"
        name = ".".join(where[1:])
        label = {"query": "query parameter", "path": "path parameter", "body": "body field",
                 "header": "header"}.get(place, place)
        target = f"{label} {name!r}" if name else ("the request body" if place == "body"
                                                    else label)
        parts.append(f"{target}: {problem.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(parts)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body(_describe_validation(exc), 400), status_code=400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (f"no API endpoint at {request.method} {request.url.path}; the endpoints are "
                   "listed at /api/docs")
    elif exc.status_code == 405:
        message = f"{request.url.path} does not answer {request.method}; see /api/docs"
    else:
        message = str(exc.detail)
    return JSONResponse(error_body(message, exc.status_code), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> Response:
    if is_full(exc):  # a full disk a backend did not name: still 507 and one sentence
        return error_response(DiskFull("no space left on the device holding pushsite's data; "
                                       "free some space there and try again"))
    body = error_body("internal server error: this is a bug in pushsite; the server log has "
                      "the details", 500)
    if request.scope.get(DEBUG_KEY):
        body["traceback"] = "".join(traceback.format_exception(exc))
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: Starlette) -> None:
    """Register the handlers above on an app (the JSON API; the dashboard may reuse them)."""
    app.add_exception_handler(PushsiteError, _pushsite_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def with_debug_flag(app: ASGIApp) -> ASGIApp:
    """Wrap a mounted app so its handlers know whether the outer app runs with --debug.

    A mounted app replaces `scope["app"]` with itself, so the outer app's `debug` is read here,
    before that happens.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if DEBUG_KEY not in scope:
            scope[DEBUG_KEY] = bool(getattr(scope.get("app"), "debug", False))
        await app(scope, receive, send)

    return wrapped
