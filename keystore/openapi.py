"""Refusals in OpenAPI: the answers ``ApiKeyAuth`` gives, in an app's
document, and ``refusal`` for the routers' own (admin, self-service).

Every operation whose security requirement names the dependency's scheme
gets 401, 429 and 503, 403 if it asks for a scope, and the RateLimit headers
on its successes; an answer the route documents itself is left as it is.
"""

import copy
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class ErrorOut(BaseModel):
    """The body of a refusal (but a 422, whose body is FastAPI's)."""

    detail: str


# The OpenAPI objects of the answers below, for document().
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
_SECONDS = {"type": "integer", "minimum": 0}
RATE_HEADERS = {
    "RateLimit-Policy": {
        "description": 'A key with a rate limit: each limit, `"key";q=100;w=60`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of each, seconds to reset: `"key";r=42;t=17`.',
        "schema": {"type": "string"},
    },
}


def _answer(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _ERROR}
    if headers:
        answer["headers"] = headers
    return answer


_UNAUTHORIZED = _answer(
    "Missing, unknown, malformed, disabled or expired API key (or several).",
    {
        "WWW-Authenticate": {
            "required": True,
            "schema": {"type": "string", "const": "APIKey"},
        }
    },
)
_FORBIDDEN = _answer("The API key lacks a scope this route needs.", RATE_HEADERS)
_LIMITED = _answer(
    "A usage limit refuses: `Rate limit exceeded.` or `Usage credits exhausted.`",
    {
        "Retry-After": {
            "description": "Seconds until a request would pass, if known.",
            "schema": _SECONDS,
        },
        **RATE_HEADERS,
    },
)
_UNAVAILABLE = _answer(
    "The key store cannot answer now; retry after `Retry-After` seconds.",
    {"Retry-After": {"required": True, "schema": _SECONDS}},
)


def refusal(
    code: int, description: str, headers: dict[str, Any] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A router's or route's ``responses`` entry: answer ``code``, its body an
    ``ErrorOut``; entries join with ``|``."""
    answer: dict[str, Any] = {"model": ErrorOut, "description": description}
    if headers:
        answer["headers"] = headers
    return {code: answer}


#: A body that is not text (FastAPI's own 400), on routes that take one.
UNREADABLE_BODY = refusal(
    400, "The body is not text: FastAPI's `There was an error parsing the body`."
)


def document(app: FastAPI, scheme_name: str) -> None:
    """List the answers of the dependency named ``scheme_name`` in ``app``'s
    OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        add_answers(schema, scheme_name)
        return schema

    # FastAPI's way to extend the document (docs: how-to/extending-openapi).
    app.openapi = openapi  # type: ignore[method-assign]


def add_answers(schema: dict[str, Any], scheme_name: str) -> None:
    """Add the answers to the operations ``scheme_name`` guards in ``schema``."""
    # The security requirement is FastAPI's own reading of the route's
    # dependencies, scopes included: the answers cannot drift from them.
    guarded = False
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            needs = [
                scopes
                for requirement in operation.get("security", [])
                for name, scopes in requirement.items()
                if name == scheme_name
            ]
            if not needs:
                continue
            guarded = True
            responses = operation.setdefault("responses", {})
            for code, answer in responses.items():
                if code.startswith("2"):
                    headers = answer.setdefault("headers", {})
                    for name, header in RATE_HEADERS.items():
                        headers.setdefault(name, copy.deepcopy(header))
            answers = {"401": _UNAUTHORIZED, "429": _LIMITED, "503": _UNAVAILABLE}
            if any(needs):
                answers["403"] = _FORBIDDEN
            for code, answer in sorted(answers.items()):
                responses.setdefault(code, copy.deepcopy(answer))
    if guarded:
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("ErrorOut", ErrorOut.model_json_schema())
