"""orjson responses: the hot path serializes once, to bytes, and can time it."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

JSON = "application/json"


def json_response(
    payload: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON ``Response`` serialized with orjson (numpy scalars allowed; NaN becomes null)."""
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content=body, status_code=status_code, headers=headers, media_type=JSON)
