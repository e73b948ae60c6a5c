"""Error answers. Under ``/api/`` every HTTP error aiohttp raises (an unknown path such as
``/api/rooms/NAME``: 404; a wrong method: 405) is JSON ``{"error": ..., "detail": ...}``,
like the API's own errors. Elsewhere a browser asking for a page that doesn't exist (404) or
can't exist (400, such as ``/rooms/my%20room``) gets one in the chat's own style, with a link
back to the lobby. Other clients (no ``text/html`` in ``Accept``) keep aiohttp's plain
answers, and the JSON refusals of ``/ws`` and ``/api`` are untouched: they are returned, not
raised."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp_jinja2
from aiohttp import web

from ..ops.version import VERSION

TITLES = {400: "Bad request", 404: "Page not found"}
"""The statuses that get a page, and its heading."""

API_PREFIX = "/api/"


def _message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"There is no page at {request.path}."
    # aiohttp's own text for a bare HTTPBadRequest is "400: Bad Request": say nothing more then.
    text = exc.text or ""
    return "" if text.startswith(f"{exc.status}:") else text


@web.middleware
async def error_pages(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn a raised HTTP error under ``/api/`` into JSON, and a raised 400 or 404 elsewhere
    into the HTML error page for browsers (see the module)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith(API_PREFIX):
            return _api_error(request, exc)
        if exc.status not in TITLES or "text/html" not in request.headers.get("Accept", ""):
            raise
        context = {
            "status": exc.status,
            "title": TITLES[exc.status],
            "message": _message(request, exc),
            "version": VERSION,
        }
        return aiohttp_jinja2.render_template("error.html", request, context, status=exc.status)


def _api_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """``{"error": "not_found" | "method_not_allowed" | ..., "detail": str}`` with the status
    of ``exc`` (and its ``Allow`` header, for a 405)."""
    details = {
        404: f"no API endpoint at {request.path}",
        405: f"{request.method} is not allowed on {request.path}",
    }
    error = exc.reason.lower().replace(" ", "_")
    body = {"error": error, "detail": details.get(exc.status, exc.reason)}
    response = web.json_response(body, status=exc.status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response
