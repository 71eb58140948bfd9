"""Request and response models of the OpenAI-compatible API (pydantic v2).

Requests are strict: unknown fields are rejected (400 "Unrecognized request argument supplied:
<name>"), numbers are not parsed from strings, NaN/inf are refused. Exceptions, for tolerance of
real clients:

* ``user``, ``metadata``, ``safety_identifier``, ``prompt_cache_key`` are accepted hints (unused).
* Some OpenAI parameters this gateway does not implement are accepted at their neutral value and
  rejected otherwise with a 400 naming them (``tools: null`` or ``[]``, ``tool_choice: "none"``,
  ``response_format: {"type": "text"}``, ``store: false``, ``service_tier: "auto"``, ...); see
  ``_NEUTRAL_CHAT_PARAMS``. They are dropped before validation and never reach the models.
* ``stream_options.include_obfuscation`` is accepted and ignored.
* Assistant messages echoed back from a previous response (``refusal: null`` and null
  ``tool_calls``/``function_call``/``audio``/``annotations``) are accepted.

Every validation failure becomes a 400 whose ``param`` is the dotted path of the field (see
``gateway.errors``). Response models serialise to exactly OpenAI's shapes with
``model_dump_json()`` / ``model_dump(mode="json")`` (never use ``exclude_none``: ``logprobs``,
``finish_reason`` and ``usage`` must stay as explicit nulls; ``ChatCompletionDelta`` drops its
own unset fields).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.errors import CUSTOM_ERROR_TYPE, PARAM_PLACEHOLDER

__all__ = [
    "MAX_MESSAGES",
    "MAX_STOP_SEQUENCES",
    "ChatChoiceLogprobs",
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionDelta",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatTokenLogprob",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "ErrorDetail",
    "ErrorResponse",
    "FinishReason",
    "Model",
    "ModelList",
    "StreamOptions",
    "TextContentPart",
    "TopLogprob",
    "Usage",
    "new_chat_completion_id",
    "new_completion_id",
]

MAX_STOP_SEQUENCES = 4
MAX_MESSAGES = 1024
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_TOKEN_ID = re.compile(r"[0-9]+")
_P = PARAM_PLACEHOLDER

_REQUEST_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _invalid(message: str, param: str | None = None) -> PydanticCustomError:
    """A validation error with our own message; ``param`` is relative to the field/model."""
    return PydanticCustomError(CUSTOM_ERROR_TYPE, message, {"param": param} if param else None)


def _missing(param: str) -> PydanticCustomError:
    return _invalid(f"Missing required parameter: '{_P}'.", param)


# --------------------------------------------------------------------------------------------
# requests


class TextContentPart(BaseModel):
    """``{"type": "text", "text": ...}``: the only content part type accepted."""

    model_config = _REQUEST_CONFIG

    type: Literal["text"] = "text"
    text: str


def _validate_parts(value: list[Any]) -> list[TextContentPart]:
    parts: list[TextContentPart] = []
    for i, part in enumerate(value):
        if isinstance(part, TextContentPart):
            parts.append(part)
            continue
        if not isinstance(part, dict):
            raise _invalid(f"Invalid type for '{_P}': expected a content part object.", str(i))
        if "type" not in part:
            raise _missing(f"{i}.type")
        kind = part["type"]
        if kind != "text":
            raise _invalid(
                f"Invalid value for '{_P}': content parts of type {kind!r} are not supported; "
                "only 'text' parts are accepted.",
                f"{i}.type",
            )
        if "text" not in part:
            raise _missing(f"{i}.text")
        if not isinstance(part["text"], str):
            raise _invalid(f"Invalid type for '{_P}': expected a string.", f"{i}.text")
        for key in part:
            if key not in ("type", "text"):
                raise _invalid(f"Unrecognized request argument supplied: {_P}", f"{i}.{key}")
        parts.append(TextContentPart(text=part["text"]))
    return parts


_NULL_ONLY_MESSAGE_FIELDS = ("tool_calls", "function_call", "audio", "annotations")


class ChatMessage(BaseModel):
    """One input message. ``content`` may be null only for assistant messages."""

    model_config = _REQUEST_CONFIG

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextContentPart] | None
    name: str | None = None
    refusal: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_null_extras(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in _NULL_ONLY_MESSAGE_FIELDS:
            if key in data:
                value = data.pop(key)
                if value not in (None, []):
                    raise _invalid(
                        f"Invalid value for '{_P}': '{key}' is not supported by this gateway "
                        "(no tool calling or audio).",
                        key,
                    )
        return data

    @field_validator("role", mode="before")
    @classmethod
    def _check_role(cls, value: Any) -> Any:
        if value in ("tool", "function"):
            raise _invalid(
                f"Invalid value for '{_P}': messages with role {value!r} are not supported by "
                "this gateway (no tool calling).",
            )
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            return _validate_parts(value)
        raise _invalid(f"Invalid type for '{_P}': expected a string or an array of content parts.")

    @model_validator(mode="after")
    def _check_nulls(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise _invalid(
                f"Invalid value for '{_P}': content may be null only in assistant messages.",
                "content",
            )
        if self.refusal is not None and self.role != "assistant":
            raise _invalid(
                f"Invalid value for '{_P}': only assistant messages have a refusal.", "refusal"
            )
        return self

    @property
    def text(self) -> str:
        """The content as one string: text parts joined with newlines; null content is ``""``."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """``stream_options``; ``include_obfuscation`` is accepted and ignored."""

    model_config = _REQUEST_CONFIG

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


def _is_neutral_tools(value: Any) -> bool:
    return value in (None, [])


# OpenAI parameters not implemented here: accepted (and dropped) when the predicate holds.
_NEUTRAL_CHAT_PARAMS: dict[str, Any] = {
    "tools": _is_neutral_tools,
    "functions": _is_neutral_tools,
    "tool_choice": lambda v: v in (None, "none"),
    "function_call": lambda v: v in (None, "none"),
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "service_tier": lambda v: v in (None, "auto", "default"),
    "store": lambda v: v in (None, False),
    "modalities": lambda v: v in (None, ["text"]),
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "verbosity": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "safety_identifier": lambda v: v is None or isinstance(v, str),
    "prompt_cache_key": lambda v: v is None or isinstance(v, str),
}
_NEUTRAL_COMPLETION_PARAMS: dict[str, Any] = {
    "safety_identifier": _NEUTRAL_CHAT_PARAMS["safety_identifier"],
    "prompt_cache_key": _NEUTRAL_CHAT_PARAMS["prompt_cache_key"],
}


def _drop_neutral(data: Any, table: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for key, is_neutral in table.items():
        if key in data:
            value = data.pop(key)
            if not is_neutral(value):
                raise _invalid(
                    f"Invalid value for '{_P}': '{key}' is not supported by this gateway "
                    "(only its default value is accepted).",
                    key,
                )
    return data


_Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
_Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
_Bias = Annotated[float, Field(ge=-100.0, le=100.0)]
_MaxTokens = Annotated[int, Field(ge=1)]
_Seed = Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX)]


class _SamplingRequest(BaseModel):
    """Fields shared by chat and legacy completions requests."""

    model_config = _REQUEST_CONFIG

    model: str = Field(min_length=1)
    max_tokens: _MaxTokens | None = None
    temperature: _Temperature | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    #: an extension (like vLLM): 0 (or -1) = off
    top_k: Annotated[int, Field(ge=-1)] | None = None
    seed: _Seed | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1, le=8)] = 1
    presence_penalty: _Penalty | None = None
    frequency_penalty: _Penalty | None = None
    logit_bias: dict[str, _Bias] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("n", mode="before")
    @classmethod
    def _default_n(cls, value: Any) -> Any:
        return 1 if value is None else value

    @field_validator("stream", mode="before")
    @classmethod
    def _default_stream(cls, value: Any) -> Any:
        return False if value is None else value

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            if not value:
                raise _invalid(f"Invalid value for '{_P}': stop sequences must be non-empty.")
            return value
        if isinstance(value, list):
            if len(value) > MAX_STOP_SEQUENCES:
                raise _invalid(
                    f"Invalid value for '{_P}': at most {MAX_STOP_SEQUENCES} stop sequences "
                    f"are allowed, got {len(value)}."
                )
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise _invalid(f"Invalid type for '{_P}': expected a string.", str(i))
                if not item:
                    raise _invalid(
                        f"Invalid value for '{_P}': stop sequences must be non-empty.", str(i)
                    )
            return value
        raise _invalid(f"Invalid type for '{_P}': expected a string, an array of strings or null.")

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        for key in value:
            if not _TOKEN_ID.fullmatch(key):
                raise _invalid(
                    f"Invalid key in '{_P}': {key!r} is not a token id (a non-negative integer).",
                    key,
                )
        return value

    @model_validator(mode="after")
    def _check_stream_options(self) -> _SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise _invalid(
                f"Invalid value for '{_P}': 'stream_options' is only allowed when 'stream' is "
                "true.",
                "stream_options",
            )
        return self

    def stop_list(self) -> list[str]:
        """``stop`` as a list (empty when absent)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def logit_bias_ids(self) -> dict[int, float]:
        """``logit_bias`` with integer token ids (empty when absent)."""
        return {int(k): float(v) for k, v in (self.logit_bias or {}).items()}

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk (``choices: []``)."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        """The client's token limit, or None when it gave none."""
        return self.max_tokens

    @overload
    def effective_max_tokens(self) -> int | None: ...
    @overload
    def effective_max_tokens(self, default: int) -> int: ...
    def effective_max_tokens(self, default: int | None = None) -> int | None:
        """The client's token limit (``max_completion_tokens`` before ``max_tokens`` for chat),
        or ``default`` when it gave none."""
        requested = self.requested_max_tokens()
        return default if requested is None else requested


class ChatCompletionRequest(_SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: _MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    metadata: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_unsupported(cls, data: Any) -> Any:
        return _drop_neutral(data, _NEUTRAL_CHAT_PARAMS)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _default_logprobs(cls, value: Any) -> Any:
        return False if value is None else value

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise _invalid(f"Invalid value for '{_P}': at least one message is required.")
        if len(value) > MAX_MESSAGES:
            raise _invalid(
                f"Invalid value for '{_P}': at most {MAX_MESSAGES} messages are allowed."
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > 16:
            raise _invalid(f"Invalid value for '{_P}': at most 16 keys are allowed.")
        for key, item in value.items():
            if len(key) > 64:
                raise _invalid(f"Invalid key in '{_P}': keys are at most 64 characters.")
            if len(item) > 512:
                raise _invalid(f"Invalid value for '{_P}': values are at most 512 characters.", key)
        return value

    @model_validator(mode="after")
    def _check_top_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise _invalid(
                f"Invalid value for '{_P}': 'top_logprobs' requires 'logprobs' to be true.",
                "top_logprobs",
            )
        return self

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` if given, else ``max_tokens``, else None."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        """``[{"role", "content"}]`` for a chat template (``developer`` → ``system``)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text}
            for m in self.messages
        ]


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions`` (legacy). ``echo: true``, ``suffix`` and ``best_of`` other than
    null/``n`` are rejected with a 400; token-id prompts too.

    With a list of prompts, choice ``index`` is ``prompt_index * n + i`` (OpenAI's order). OpenAI
    defaults ``max_tokens`` to 16 here: ``effective_max_tokens(16)`` reproduces that.
    """

    prompt: str | list[str]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_unsupported(cls, data: Any) -> Any:
        return _drop_neutral(data, _NEUTRAL_COMPLETION_PARAMS)

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            if not value:
                raise _invalid(f"Invalid value for '{_P}': at least one prompt is required.")
            for i, item in enumerate(value):
                if isinstance(item, int | list) and not isinstance(item, bool):
                    raise _invalid(
                        f"Invalid value for '{_P}': token-id prompts are not supported; send text."
                    )
                if not isinstance(item, str):
                    raise _invalid(f"Invalid type for '{_P}': expected a string.", str(i))
            return value
        if value is None:
            raise _missing("")
        raise _invalid(f"Invalid type for '{_P}': expected a string or an array of strings.")

    @field_validator("echo", mode="before")
    @classmethod
    def _check_echo(cls, value: Any) -> Any:
        if value is None:
            return False
        if value is True:
            raise _invalid(f"Invalid value for '{_P}': 'echo' is not supported by this gateway.")
        return value

    @field_validator("suffix")
    @classmethod
    def _check_suffix(cls, value: str | None) -> str | None:
        if value is not None:
            raise _invalid(f"Invalid value for '{_P}': 'suffix' is not supported by this gateway.")
        return value

    @model_validator(mode="after")
    def _check_best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise _invalid(
                f"Invalid value for '{_P}': 'best_of' is not supported by this gateway (it may "
                "only equal 'n').",
                "best_of",
            )
        return self

    def prompts(self) -> list[str]:
        """``prompt`` as a list of strings."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# --------------------------------------------------------------------------------------------
# responses

FinishReason = Literal["stop", "length"]


def _now() -> int:
    return int(time.time())


def new_chat_completion_id() -> str:
    """``chatcmpl-<32 hex>``."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def new_completion_id() -> str:
    """``cmpl-<32 hex>``."""
    return f"cmpl-{uuid.uuid4().hex}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=new_chat_completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatCompletionDelta(BaseModel):
    """A streamed delta; serialises without its null fields (``{}`` in the last chunk)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: ChatCompletionDelta = Field(default_factory=ChatCompletionDelta)
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One SSE event. The usage chunk (``include_usage``) has ``choices=[]`` and ``usage`` set."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs (parallel lists, one entry per token)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """A legacy completion; streamed events have the same shape (``usage`` null but last)."""

    id: str = Field(default_factory=new_completion_id)
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """For OpenAPI docs (``responses={400: {"model": ErrorResponse}}``)."""

    error: ErrorDetail
