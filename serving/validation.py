"""Readable 422 messages from pydantic's validation errors (never a stack trace)."""

from __future__ import annotations

from typing import Any

from recstack.schemas import MAX_ID

_MAX_INPUT = 40


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_INPUT else text[: _MAX_INPUT - 3] + "..."


def readable_errors(errors: list[dict[str, Any]] | Any, k_max: int) -> list[dict[str, str]]:
    """``[{"field": "query.k", "msg": "k must be ..."}]`` for each pydantic error."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(loc)
        name = loc[-1] if loc else ""
        got = f" (got {_shown(err['input'])})" if "input" in err and not isinstance(
            err["input"], dict | list) else ""
        shown_field = ".".join(loc[1:]) if loc[:1] == ["body"] and len(loc) > 1 else field
        if loc[:2] == ["path", "user_id"]:
            msg = f"user_id must be a non-negative integer, at most {MAX_ID}{got}"
        elif loc[:2] == ["query", "k"]:
            msg = f"k must be an integer between 1 and {k_max}{got}"
        elif err.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        elif err.get("type") == "missing":
            msg = f"{shown_field or name} is required"
        else:
            msg = f"{shown_field}: {err.get('msg', 'invalid')}{got}"
        out.append({"field": field, "msg": msg})
    return out
