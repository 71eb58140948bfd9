"""OpenAI error shapes from gateway.errors, through a tiny FastAPI app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field

from gateway import errors
from gateway.schemas import ChatCompletionRequest

LIMIT = 1000


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    count: int = Field(default=0, ge=0)


def make_app() -> FastAPI:
    app = FastAPI()
    errors.install_error_handlers(app)
    app.add_middleware(errors.BodySizeLimit, max_bytes=LIMIT)

    @app.post("/items")
    async def create(item: Item) -> dict[str, Any]:
        return item.model_dump()

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, Any]:
        item = errors.parse_json_body(Item, await request.body())
        return item.model_dump()

    @app.post("/chat")
    async def chat(body: ChatCompletionRequest) -> dict[str, str]:
        return {"model": body.model}

    @app.get("/api-error/{kind}")
    async def api_error(kind: str) -> None:
        raise {
            "rate": errors.rate_limited(2.5),
            "unavailable": errors.unavailable("no peers serve this model", retry_after=7),
            "auth": errors.authentication_error(),
            "model": errors.not_found("The model 'x' does not exist"),
            "internal": errors.internal_error(),
        }[kind]

    @app.get("/http-error")
    async def http_error() -> None:
        raise HTTPException(status_code=409, detail="conflicting thing")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: /etc/passwd")

    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


def test_api_error_body_and_response() -> None:
    err = errors.invalid_request("bad", param="x", code="c")
    assert err.status == 400
    assert err.body() == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": "c"}
    }
    assert err.to_response().status_code == 400


def test_rate_limited_has_retry_after(client: TestClient) -> None:
    r = client.get("/api-error/rate")
    err = error_of(r, 429)
    assert err["code"] == "rate_limit_exceeded"
    assert r.headers["retry-after"] == "3"
    assert r.headers["retry-after-ms"] == "2500"


def test_unavailable(client: TestClient) -> None:
    r = client.get("/api-error/unavailable")
    err = error_of(r, 503)
    assert err["type"] == "server_error"
    assert err["message"] == "no peers serve this model"
    assert r.headers["retry-after"] == "7"


def test_auth_and_not_found_and_internal(client: TestClient) -> None:
    assert error_of(client.get("/api-error/auth"), 401)["code"] == "invalid_api_key"
    err = error_of(client.get("/api-error/model"), 404)
    assert (err["param"], err["code"]) == ("model", "model_not_found")
    assert error_of(client.get("/api-error/internal"), 500)["type"] == "server_error"


def test_extra_field(client: TestClient) -> None:
    err = error_of(client.post("/items", json={"name": "a", "color": "red"}), 400)
    assert err["param"] == "color"
    assert err["message"] == "Unrecognized request argument supplied: color"
    assert err["type"] == "invalid_request_error"


def test_missing_field(client: TestClient) -> None:
    err = error_of(client.post("/items", json={"count": 1}), 400)
    assert err["param"] == "name"
    assert "Missing required parameter" in err["message"]


def test_bad_value_names_param(client: TestClient) -> None:
    err = error_of(client.post("/items", json={"name": "a", "count": -1}), 400)
    assert err["param"] == "count"
    assert "count" in err["message"]
    assert "loc" not in str(err) and "detail" not in str(err)


def test_nested_param_path(client: TestClient) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "robot"}]}
    err = error_of(client.post("/chat", json=body), 400)
    assert err["param"] == "messages.1.role"


@pytest.mark.parametrize("path", ["/items", "/raw"])
def test_malformed_json(client: TestClient, path: str) -> None:
    r = client.post(path, content=b'{"name": ', headers={"content-type": "application/json"})
    err = error_of(r, 400)
    assert err["message"].startswith("We could not parse the JSON body of your request")
    assert err["param"] is None


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b""])
def test_body_not_an_object(client: TestClient, payload: bytes) -> None:
    r = client.post("/items", content=payload, headers={"content-type": "application/json"})
    err = error_of(r, 400)
    assert "JSON body" in err["message"]


def test_parse_json_body_validation(client: TestClient) -> None:
    err = error_of(client.post("/raw", json={"name": "a", "count": "many"}), 400)
    assert err["param"] == "count"
    assert client.post("/raw", json={"name": "a", "count": 2}).json() == {"name": "a", "count": 2}


def test_unknown_route_and_method(client: TestClient) -> None:
    err = error_of(client.get("/v1/nothing"), 404)
    assert err["message"] == "Invalid URL (GET /v1/nothing)"
    r = client.get("/items")
    err = error_of(r, 405)
    assert "GET /items" in err["message"]
    assert r.headers["allow"] == "POST"


def test_http_exception_detail_kept(client: TestClient) -> None:
    err = error_of(client.get("/http-error"), 409)
    assert err["message"] == "conflicting thing"


def test_unhandled_exception_does_not_leak(client: TestClient) -> None:
    r = client.get("/boom")
    err = error_of(r, 500)
    assert err["type"] == "server_error"
    assert "secret" not in r.text and "passwd" not in r.text and "Traceback" not in r.text


def test_body_limit_content_length(client: TestClient) -> None:
    body = b'{"name": "' + b"x" * (2 * LIMIT) + b'"}'
    r = client.post("/items", content=body, headers={"content-type": "application/json"})
    err = error_of(r, 413)
    assert err["code"] == "request_too_large"


def test_body_limit_streamed_body(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    r = client.post("/items", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    error_of(r, 413)


def test_body_under_limit_passes(client: TestClient) -> None:
    r = client.post("/items", json={"name": "x" * (LIMIT // 2), "count": 1})
    assert r.status_code == 200
