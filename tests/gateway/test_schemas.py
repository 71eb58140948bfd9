"""Request validation (each 400 names the right param) and response shapes of gateway.schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from gateway.errors import install_error_handlers
from gateway.schemas import (
    ChatChoiceLogprobs,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Model,
    ModelList,
    TopLogprob,
    Usage,
)

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION: dict[str, Any] = {"model": "m", "prompt": "Once upon"}
seen: dict[str, Any] = {}


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest) -> Any:
        seen["chat"] = body
        if body.stream:
            return StreamingResponse(_chat_events(body), media_type="text/event-stream")
        content = [ChatTokenLogprob(token="Hi", logprob=-0.5, bytes=[72, 105], top_logprobs=[])]
        return ChatCompletion(
            model=body.model,
            choices=[
                ChatCompletionChoice(
                    index=i,
                    message=ChatCompletionMessage(content="Hi"),
                    logprobs=ChatChoiceLogprobs(content=content) if body.logprobs else None,
                    finish_reason="stop",
                )
                for i in range(body.n)
            ],
            usage=Usage.of(3, 1),
            system_fingerprint="fp",
        ).model_dump(mode="json")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict[str, Any]:
        seen["completion"] = body
        return Completion(
            model=body.model,
            choices=[CompletionChoice(text=" a time", index=0, finish_reason="length")],
            usage=Usage.of(2, 2),
        ).model_dump(mode="json")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return ModelList(data=[Model(id="m", created=1, owned_by="swarmgate")]).model_dump()

    return app


def _chat_events(body: ChatCompletionRequest) -> Iterator[str]:
    def event(choices: list[ChatCompletionChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(
            id="chatcmpl-1", created=1, model=body.model, choices=choices, usage=usage
        )
        return f"data: {chunk.model_dump_json()}\n\n"

    yield event([ChatCompletionChunkChoice(index=0, delta=ChatCompletionDelta(role="assistant"))])
    yield event([ChatCompletionChunkChoice(index=0, delta=ChatCompletionDelta(content="Hi"))])
    yield event([ChatCompletionChunkChoice(index=0, finish_reason="stop")])
    if body.include_usage:
        yield event([], Usage.of(3, 1))
    yield "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as c:
        yield c


def post_error(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    return dict(err)


def user(content: Any) -> dict[str, Any]:
    return {**CHAT, "messages": [{"role": "user", "content": content}]}


CHAT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", {**CHAT, "foo": 1}, "foo"),
    ("no model", {"messages": CHAT["messages"]}, "model"),
    ("empty model", {**CHAT, "model": ""}, "model"),
    ("no messages", {"model": "m"}, "messages"),
    ("empty messages", {**CHAT, "messages": []}, "messages"),
    ("messages not a list", {**CHAT, "messages": "hi"}, "messages"),
    ("bad role", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ("tool role", {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ("no content", {**CHAT, "messages": [{"role": "user"}]}, "messages.0.content"),
    ("null user content", user(None), "messages.0.content"),
    ("content number", user(5), "messages.0.content"),
    (
        "image part",
        user([{"type": "image_url", "image_url": {"url": "x"}}]),
        "messages.0.content.0.type",
    ),
    (
        "second part bad",
        user([{"type": "text", "text": "a"}, {"type": "audio"}]),
        "messages.0.content.1.type",
    ),
    ("part without text", user([{"type": "text"}]), "messages.0.content.0.text"),
    ("part text not str", user([{"type": "text", "text": 1}]), "messages.0.content.0.text"),
    ("part extra key", user([{"type": "text", "text": "a", "x": 1}]), "messages.0.content.0.x"),
    (
        "message extra",
        {**CHAT, "messages": [{"role": "user", "content": "a", "x": 1}]},
        "messages.0.x",
    ),
    (
        "tool calls",
        {**CHAT, "messages": [{"role": "assistant", "content": "a", "tool_calls": [{}]}]},
        "messages.0.tool_calls",
    ),
    ("temperature high", {**CHAT, "temperature": 2.5}, "temperature"),
    ("temperature negative", {**CHAT, "temperature": -0.1}, "temperature"),
    ("temperature string", {**CHAT, "temperature": "0.5"}, "temperature"),
    ("top_p zero", {**CHAT, "top_p": 0}, "top_p"),
    ("top_p above one", {**CHAT, "top_p": 1.5}, "top_p"),
    ("top_k negative", {**CHAT, "top_k": -2}, "top_k"),
    ("top_k float", {**CHAT, "top_k": 1.5}, "top_k"),
    ("max_tokens zero", {**CHAT, "max_tokens": 0}, "max_tokens"),
    ("max_completion_tokens zero", {**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
    ("n zero", {**CHAT, "n": 0}, "n"),
    ("n nine", {**CHAT, "n": 9}, "n"),
    ("n bool", {**CHAT, "n": True}, "n"),
    ("seed string", {**CHAT, "seed": "1"}, "seed"),
    ("seed huge", {**CHAT, "seed": 2**70}, "seed"),
    ("presence", {**CHAT, "presence_penalty": 2.5}, "presence_penalty"),
    ("frequency", {**CHAT, "frequency_penalty": -3}, "frequency_penalty"),
    ("stop empty", {**CHAT, "stop": ""}, "stop"),
    ("stop five", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("stop item empty", {**CHAT, "stop": ["a", ""]}, "stop.1"),
    ("stop item number", {**CHAT, "stop": ["a", 3]}, "stop.1"),
    ("stop number", {**CHAT, "stop": 3}, "stop"),
    ("logit_bias key", {**CHAT, "logit_bias": {"abc": 1}}, "logit_bias.abc"),
    ("logit_bias negative key", {**CHAT, "logit_bias": {"-1": 1}}, "logit_bias.-1"),
    ("logit_bias value", {**CHAT, "logit_bias": {"5": 101}}, "logit_bias.5"),
    ("top_logprobs without logprobs", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
    ("top_logprobs too many", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (
        "stream_options without stream",
        {**CHAT, "stream_options": {"include_usage": True}},
        "stream_options",
    ),
    (
        "stream_options extra",
        {**CHAT, "stream": True, "stream_options": {"x": 1}},
        "stream_options.x",
    ),
    ("stream not bool", {**CHAT, "stream": "yes"}, "stream"),
    ("metadata value", {**CHAT, "metadata": {"a": 1}}, "metadata.a"),
    ("user not str", {**CHAT, "user": 5}, "user"),
    ("tools", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    (
        "response_format json",
        {**CHAT, "response_format": {"type": "json_object"}},
        "response_format",
    ),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES]
)
def test_chat_validation_names_param(client: TestClient, body: dict[str, Any], param: str) -> None:
    err = post_error(client, "/v1/chat/completions", body)
    assert err["param"] == param
    assert param.split(".")[0] in err["message"]


COMPLETION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("no prompt", {"model": "m"}, "prompt"),
    ("empty prompt list", {**COMPLETION, "prompt": []}, "prompt"),
    ("token prompt", {**COMPLETION, "prompt": [1, 2, 3]}, "prompt"),
    ("prompt item", {**COMPLETION, "prompt": ["a", None]}, "prompt.1"),
    ("echo", {**COMPLETION, "echo": True}, "echo"),
    ("suffix", {**COMPLETION, "suffix": "end"}, "suffix"),
    ("logprobs six", {**COMPLETION, "logprobs": 6}, "logprobs"),
    ("logprobs bool", {**COMPLETION, "logprobs": True}, "logprobs"),
    ("best_of", {**COMPLETION, "best_of": 3}, "best_of"),
    ("messages", {**COMPLETION, "messages": []}, "messages"),
    ("top_logprobs", {**COMPLETION, "top_logprobs": 1}, "top_logprobs"),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in COMPLETION_CASES], ids=[c[0] for c in COMPLETION_CASES]
)
def test_completion_validation_names_param(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    assert post_error(client, "/v1/completions", body)["param"] == param


def test_chat_accepts_full_request(client: TestClient) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "user", "content": "hi", "name": "bob"},
            {"role": "assistant", "content": "hello", "refusal": None, "tool_calls": None},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "again"},
        ],
        "max_tokens": 10,
        "max_completion_tokens": 5,
        "temperature": 0,
        "top_p": 0.5,
        "top_k": 40,
        "seed": -3,
        "stop": ["\n", "END"],
        "n": 2,
        "presence_penalty": 1,
        "frequency_penalty": -1.5,
        "logit_bias": {"50256": -100, "7": 3.5},
        "logprobs": True,
        "top_logprobs": 20,
        "stream": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "user": "u-1",
        "metadata": {"k": "v"},
        "tools": None,
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "store": False,
        "parallel_tool_calls": True,
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    req: ChatCompletionRequest = seen["chat"]
    assert req.effective_max_tokens() == 5
    assert req.effective_max_tokens(100) == 5
    assert req.stop_list() == ["\n", "END"]
    assert req.logit_bias_ids() == {50256: -100.0, 7: 3.5}
    assert req.include_usage
    assert req.messages[1].text == "a\nb"
    assert req.messages[4].text == ""
    assert req.template_messages()[1] == {"role": "system", "content": "a\nb"}


def test_chat_defaults() -> None:
    req = ChatCompletionRequest.model_validate(
        {**CHAT, "n": None, "stream": None, "logprobs": None, "stop": None, "temperature": None}
    )
    assert (req.n, req.stream, req.logprobs) == (1, False, False)
    assert req.stop_list() == []
    assert req.effective_max_tokens() is None
    assert req.effective_max_tokens(64) == 64
    assert not req.include_usage
    req = ChatCompletionRequest.model_validate({**CHAT, "max_tokens": 7, "stop": "x"})
    assert req.effective_max_tokens(64) == 7
    assert req.stop_list() == ["x"]


def test_completion_request() -> None:
    req = CompletionRequest.model_validate({**COMPLETION, "prompt": ["a", "b"], "logprobs": 2})
    assert req.prompts() == ["a", "b"]
    assert req.effective_max_tokens(16) == 16
    assert CompletionRequest.model_validate({**COMPLETION, "echo": False, "best_of": 1}).n == 1


def test_openai_sdk_round_trip(client: TestClient) -> None:
    sdk = openai.OpenAI(api_key="k", base_url="http://testserver/v1", http_client=client)
    out = sdk.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        max_completion_tokens=3,
        temperature=0.2,
        top_p=0.9,
        seed=1,
        stop=["x"],
        n=2,
        logprobs=True,
        top_logprobs=2,
        logit_bias={"5": 1},
        presence_penalty=0.1,
        frequency_penalty=0.1,
        user="u",
        metadata={"a": "b"},
        extra_body={"top_k": 5},
    )
    assert out.object == "chat.completion" and len(out.choices) == 2
    assert out.choices[0].message.content == "Hi"
    assert out.choices[0].logprobs is not None and out.choices[0].logprobs.content
    assert out.usage is not None and out.usage.total_tokens == 4
    # a previous answer sent back as a message
    again = sdk.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}, out.choices[0].message],  # type: ignore[list-item]
    )
    assert again.choices[0].finish_reason == "stop"
    chunks = list(
        sdk.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [c.choices[0].delta.content for c in chunks[:3]] == [None, "Hi", None]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    comp = sdk.completions.create(model="m", prompt="Once", max_tokens=2, logprobs=1, seed=2)
    assert comp.choices[0].text == " a time"
    assert [m.id for m in sdk.models.list()] == ["m"]


def test_chunk_serialisation_shape() -> None:
    first = ChatCompletionChunk(
        id="c",
        created=1,
        model="m",
        choices=[
            ChatCompletionChunkChoice(
                index=0, delta=ChatCompletionDelta(role="assistant", content="")
            )
        ],
    )
    data = json.loads(first.model_dump_json())
    assert data["object"] == "chat.completion.chunk"
    assert data["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    assert data["usage"] is None
    last = ChatCompletionChunk(
        id="c",
        created=1,
        model="m",
        choices=[ChatCompletionChunkChoice(index=0, finish_reason="length")],
    )
    assert json.loads(last.model_dump_json())["choices"][0]["delta"] == {}
    usage_chunk = ChatCompletionChunk(
        id="c", created=1, model="m", choices=[], usage=Usage.of(2, 3)
    )
    assert json.loads(usage_chunk.model_dump_json())["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
    }


def test_chat_completion_shape() -> None:
    lp = ChatTokenLogprob(
        token="a",
        logprob=-1.0,
        bytes=[97],
        top_logprobs=[TopLogprob(token="b", logprob=-2.0, bytes=[98])],
    )
    done = ChatCompletion(
        model="m",
        choices=[
            ChatCompletionChoice(
                index=0,
                message=ChatCompletionMessage(content="a"),
                logprobs=ChatChoiceLogprobs(content=[lp]),
                finish_reason="stop",
            )
        ],
        usage=Usage.of(1, 1),
    )
    data = json.loads(done.model_dump_json())
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "a", "refusal": None}
    assert data["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0] == {
        "token": "b",
        "logprob": -2.0,
        "bytes": [98],
    }
    comp = json.loads(
        Completion(model="m", choices=[CompletionChoice(text="x", index=0)]).model_dump_json()
    )
    assert comp["id"].startswith("cmpl-") and comp["object"] == "text_completion"
    assert comp["choices"][0] == {"text": "x", "index": 0, "logprobs": None, "finish_reason": None}
