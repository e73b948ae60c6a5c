"""HTML pages served to browsers: error pages (their look is checked in test_browser)."""

from __future__ import annotations

from typing import Any

import pytest

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/rooms/my%20room", 400, "room must be 1-64 characters"),
        ("/nowhere", 404, "There is no page at /nowhere."),
    ],
)
async def test_a_browser_gets_an_error_page_with_a_link_to_the_lobby(
    make_server: Any, path: str, status: int, says: str
) -> None:
    server = await make_server()
    response = await server.get(path, headers=HTML)
    body = await response.text()
    assert response.status == status
    assert response.content_type == "text/html"
    assert says in body
    assert '<a class="button-link" href="/">Back to the lobby</a>' in body


async def test_other_clients_keep_plain_error_answers(make_server: Any) -> None:
    server = await make_server()
    response = await server.get("/nowhere", headers={"Accept": "*/*"})
    assert (response.status, response.content_type) == (404, "text/plain")


async def test_websocket_refusals_stay_json_for_browsers_too(make_server: Any) -> None:
    server = await make_server()
    response = await server.get("/ws", params={"room": "bad room"}, headers=HTML)
    assert (response.status, response.content_type) == (400, "application/json")


@pytest.mark.parametrize("accept", ["*/*", HTML["Accept"]])
@pytest.mark.parametrize("path", ["/api/rooms/lobby", "/api/nowhere", "/api/"])
async def test_unknown_api_paths_answer_a_json_404(
    make_server: Any, path: str, accept: str
) -> None:
    server = await make_server()
    response = await server.get(path, headers={"Accept": accept})
    assert (response.status, response.content_type) == (404, "application/json")
    assert await response.json() == {"error": "not_found", "detail": f"no API endpoint at {path}"}


async def test_a_wrong_method_on_the_api_answers_a_json_405(make_server: Any) -> None:
    server = await make_server()
    response = await server.post("/api/rooms")
    assert (response.status, response.content_type) == (405, "application/json")
    assert response.headers["Allow"] == "GET,HEAD"
    assert (await response.json())["error"] == "method_not_allowed"
