"""The pieces an OpenAPI entry is made of (``openapi_paths.py`` writes the entries with them,
``openapi.py`` the shared components): references, answers, the operation with the statuses
every authenticated route shares.
"""

from __future__ import annotations

from typing import Any, Final

JSON: Final = "application/json"
BEARER: Final[list[dict[str, list[str]]]] = [{"bearerAuth": []}]
PUBLIC: Final[list[dict[str, list[str]]]] = []


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response; with ``schema``, a JSON body of that shape."""
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {JSON: {"schema": schema}}
    return response


def error(description: str) -> dict[str, Any]:
    """An error response: ``{"message": ...}``."""
    return answer(description, ref("Message"))


def shared(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def operation(
    summary: str,
    *,
    operation_id: str,
    tag: str,
    auth: bool,
    responses: dict[str, Any],
    description: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation. Authenticated ones also answer 401 and 429; every one may answer 403
    (a browser page on an origin not in ``CORS_ALLOWED_ORIGINS``)."""
    result: dict[str, Any] = {
        "summary": summary,
        "operationId": operation_id,
        "tags": [tag],
        "security": BEARER if auth else PUBLIC,
    }
    if description:
        result["description"] = description
    if parameters:
        result["parameters"] = parameters
    if request is not None:
        result["requestBody"] = request
    every = dict(responses)
    if auth:
        every.setdefault("401", shared("Unauthorized"))
        every.setdefault("429", shared("TooManyRequests"))
    every.setdefault("403", shared("OriginRefused"))
    result["responses"] = dict(sorted(every.items()))
    return result


def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}  # fmt: skip
