"""The served OpenAPI document describes every route the server answers, and nothing else.

Routes are read from the running application itself: the Quart URL map, the raw-ASGI library
writes in front of it (``fastpath.ROUTES``) and the native WebSocket endpoint. A route added
without its description, or a description left behind by a removed route, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dramaverse.http.app import create_app
from dramaverse.http.fastpath import ROUTES as FAST_ROUTES
from dramaverse.realtime.ws import PATH as NATIVE_PATH
from tests.conftest import Server, make_settings, running_server

METHODS = {"get", "post", "put", "patch", "delete"}
NOT_ROUTES = {"HEAD", "OPTIONS"}  # HEAD follows GET; preflights are answered by the perimeter


def served_routes(server: Server) -> set[tuple[str, str]]:
    app = create_app(server.handle.state)
    found: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - NOT_ROUTES:
            found.add((path, method.lower()))
    found.update((path, "post") for path in FAST_ROUTES)
    found.add((NATIVE_PATH, "get"))
    return found


def described_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


async def fetch(server: Server) -> dict[str, Any]:
    response = await server.client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


async def test_every_route_is_described_and_every_description_is_a_route(server: Server) -> None:
    document = await fetch(server)
    served = served_routes(server)
    described = described_routes(document)
    assert served - described == set(), "routes without a description"
    assert described - served == set(), "descriptions of routes that do not exist"
    assert ("/api/user/sessions/{session_id}", "delete") in served  # the walk sees parameters
    assert ("/api/user/favorites", "post") in served


async def test_the_socket_io_path_follows_the_settings(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, socket_io_path="/dv/socket.io/")) as server:
        document = await fetch(server)
        assert "/dv/socket.io/" in document["paths"]
        assert "/socket.io/" not in document["paths"]
        assert served_routes(server) == described_routes(document)


def resolve(document: dict[str, Any], pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = document
    for part in pointer[2:].split("/"):
        node = node[part]
    return node


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in references(value)]
    if isinstance(node, list):
        return [r for value in node for r in references(value)]
    return []


async def test_the_document_is_well_formed_openapi_3_1(server: Server) -> None:
    document = await fetch(server)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "Dramaverse"
    for pointer in references(document):
        assert resolve(document, pointer) is not None
    operation_ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/")
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation["summary"], (path, method)
            assert operation["security"] in ([], [{"bearerAuth": []}]), (path, method)
            statuses = set(operation["responses"])
            assert all(re.fullmatch(r"[1-5][0-9]{2}", status) for status in statuses)
            assert any(status[0] in "12" for status in statuses), (path, method)
            if operation["security"]:
                assert {"401", "429"} <= statuses, (path, method)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert f"{{{parameter['name']}}}" in path
                    assert parameter["required"] is True
    assert len(operation_ids) == len(set(operation_ids))


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/api/auth/logout", "post", {"200", "401", "403", "429", "503"}),
        ("/api/user/sessions", "get", {"200", "401", "403", "429", "503"}),
        (
            "/api/user/sessions/{session_id}",
            "delete",
            {"200", "400", "401", "403", "404", "429", "503"},
        ),
        ("/api/user/sessions/logout-others", "post", {"200", "401", "403", "429", "503"}),
    ],
)
async def test_the_session_routes_are_described_fully(
    server: Server, path: str, method: str, statuses: set[str]
) -> None:
    operation = (await fetch(server))["paths"][path][method]
    assert set(operation["responses"]) == statuses
    assert operation["security"] == [{"bearerAuth": []}]
    assert operation["tags"] == ["sessions"]
    assert "content" in operation["responses"]["200"]


async def test_a_listed_session_has_the_documented_fields(server: Server) -> None:
    token = await server.register("alice")
    document = await fetch(server)
    schema = document["components"]["schemas"]["Session"]
    (session,) = (await server.get_as(token, "/api/user/sessions")).json()["sessions"]
    assert set(session) == set(schema["required"]) == set(schema["properties"])
