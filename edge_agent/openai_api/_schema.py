"""OpenAI chat-completion request and response models (pydantic), plus our extensions.

Requests are validated strictly (a string is not a number); fields OpenAI defines that we
do not use are accepted and ignored only when they cannot change the answer (``user``,
``metadata``, ``store``...), and refused otherwise (``n > 1``, ``logprobs``, penalties).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ErrorBody",
    "ErrorEnvelope",
    "ModelCard",
    "ModelList",
    "field_names",
]


class _In(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class TextPart(_In):
    type: str
    text: str = ""


class FunctionCallIn(_In):
    name: str
    arguments: str = "{}"


class ToolCallIn(_In):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class MessageIn(_In):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_In):
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_In):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_In):
    name: str


class NamedToolChoice(_In):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_In):
    name: str = "response"
    description: str = ""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_In):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_In):
    include_usage: bool = False


class ChatCompletionRequest(_In):
    model: str
    messages: list[MessageIn]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    logprobs: bool | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    # Extensions (also as X-Edge-* headers; see docs/API.md).
    data_class: Literal["public", "internal", "confidential", "restricted"] | None = None
    route: Literal["auto", "local_only", "large_model"] | None = None
    priority: int | None = None
    min_tokens: int | None = None
    top_k: int | None = None


def field_names() -> frozenset[str]:
    """Every field name and alias of the request models (to name a field in an error)."""
    names: set[str] = set()
    for model in (
        TextPart,
        FunctionCallIn,
        ToolCallIn,
        MessageIn,
        FunctionDef,
        ToolIn,
        FunctionName,
        NamedToolChoice,
        JsonSchemaFormat,
        ResponseFormat,
        StreamOptions,
        ChatCompletionRequest,
    ):
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
    return frozenset(names)


# -- responses --------------------------------------------------------------------------


def _omitted_when_none() -> Any:
    """An optional field left out of the JSON when None (OpenAI omits them too)."""
    return Field(default=None, exclude_if=lambda value: value is None)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCallOut(_Out):
    name: str
    arguments: str


class ToolCallOut(_Out):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ToolCallDelta(ToolCallOut):
    index: int


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = _omitted_when_none()


class UsageOut(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ProvenanceOut(_Out):
    destination: str
    model: str
    model_version: str = ""
    execution_provider: str = ""
    cloud_provider: str = ""
    decision_reason: str = ""


class TimingOut(_Out):
    queue_ms: float
    time_to_first_token_ms: float
    total_ms: float


class Choice(_Out):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(_Out):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut | None = None
    edge_provenance: ProvenanceOut | None = _omitted_when_none()
    edge_timing: TimingOut | None = _omitted_when_none()


class Delta(_Out):
    role: Literal["assistant"] | None = _omitted_when_none()
    content: str | None = _omitted_when_none()
    tool_calls: list[ToolCallDelta] | None = _omitted_when_none()


class ChunkChoice(_Out):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(_Out):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = _omitted_when_none()
    edge_provenance: ProvenanceOut | None = _omitted_when_none()
    edge_timing: TimingOut | None = _omitted_when_none()


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions: where it runs and how much context it has (0: unknown).
    edge_destination: str
    edge_context_length: int = 0
    edge_version: str = ""


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(_Out):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(_Out):
    error: ErrorBody
