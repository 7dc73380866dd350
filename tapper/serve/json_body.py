"""Request bodies are parsed by the same strict JSON parser as LaMP files (tapper.data.lamp_io).

FastAPI's own parsing is Python's json.loads: a repeated key silently keeps its last value, NaN and Infinity
pass, a 5,000-digit number or deep nesting end in a 400 "error parsing the body" that says nothing, and a
lone surrogate reaches the store. Every route of the app uses StrictJSONRoute, which parses the body first
and answers 422 with the place of the problem, in the same shape as any other validation error:
`{"detail": [{"loc": ["body", "records", 0, "score"], "msg": "...", "type": "value_error"}]}`.

A body sent with another content type (`curl -d` sends application/x-www-form-urlencoded unless told
otherwise) is answered 415 with a message that says to set `Content-Type: application/json`, instead of
FastAPI's puzzling "Input should be a valid dictionary". A body with no content type at all is read as JSON.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from tapper.data.lamp_io import JSONProblem, parse_json_strict


class StrictJSONRequest(Request):
    """A request whose json() is the strict parse (done once, before FastAPI reads the body)."""

    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = parse_json_strict(_decode(await self.body()))
        return self._strict_json


class _NotUTF8(JSONProblem):
    pass


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _NotUTF8(f"body is not valid UTF-8 (byte {err.start})", syntax=True) from None


def _is_json(content_type: str | None) -> bool:
    """The bodies FastAPI would parse as JSON: no content type, application/json or application/*+json."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def problem_as_error(problem: JSONProblem) -> dict[str, Any]:
    """One entry of a 422's detail list."""
    if problem.path is not None:
        return {"type": "value_error", "loc": ("body", *problem.path), "msg": problem.problem}
    where = f" (line {problem.line} column {problem.column})" if problem.line is not None else ""
    kind = "json_invalid" if problem.syntax else "value_error"
    return {"type": kind, "loc": ("body",), "msg": problem.problem + where}


def not_json_message(content_type: str) -> str:
    return (f"the body must be JSON, sent with the header 'Content-Type: application/json' (this request's "
            f"Content-Type is {content_type!r}; curl -d sends application/x-www-form-urlencoded unless given "
            "-H 'Content-Type: application/json')")


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            request = StrictJSONRequest(request.scope, request.receive)
            content_type = request.headers.get("content-type")
            if _is_json(content_type):
                if await request.body():
                    try:
                        await request.json()
                    except JSONProblem as problem:
                        raise RequestValidationError([problem_as_error(problem)]) from None
            elif takes_body and await request.body():
                raise HTTPException(415, detail=not_json_message(content_type or ""))
            return await handle(request)

        return strict_handler
