"""``/api/dramas``: the catalog, filtered, sorted and paginated on the server."""

from __future__ import annotations

from quart import Blueprint, Response

from dramaverse.domain.catalog import parse_query
from dramaverse.http.responses import query_pairs, raw_json_response
from dramaverse.http.state import app_state

blueprint = Blueprint("catalog", __name__)


@blueprint.get("/api/dramas")
async def dramas() -> Response:
    pairs = query_pairs()
    query = parse_query(pairs)
    return raw_json_response(app_state().catalog.index.query(query))


@blueprint.get("/api/dramas/metadata")
async def metadata() -> Response:
    return raw_json_response(app_state().catalog.index.metadata_json)
