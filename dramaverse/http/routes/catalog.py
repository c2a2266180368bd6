"""``/api/dramas``: the catalog, filtered, sorted and paginated on the server."""

from __future__ import annotations

from urllib.parse import parse_qsl

from quart import Blueprint, Response, request

from dramaverse.domain.catalog import parse_query
from dramaverse.errors import BadRequest
from dramaverse.http.responses import raw_json_response
from dramaverse.http.state import app_state

blueprint = Blueprint("catalog", __name__)
MAX_QUERY_FIELDS = 32


@blueprint.get("/api/dramas")
async def dramas() -> Response:
    try:
        pairs = parse_qsl(
            request.query_string.decode("ascii", "replace"),
            keep_blank_values=True,
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except ValueError:
        raise BadRequest(f"Too many query parameters (at most {MAX_QUERY_FIELDS}).") from None
    query = parse_query(pairs)
    return raw_json_response(app_state().catalog.index.query(query))


@blueprint.get("/api/dramas/metadata")
async def metadata() -> Response:
    return raw_json_response(app_state().catalog.index.metadata_json)
