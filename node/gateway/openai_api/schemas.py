"""OpenAI's wire shapes for the routes the gateway serves (requests, responses, stream chunks, errors).

Requests ignore fields they do not know (clients send many); the ones the network cannot
honour are refused by the translation (translate.py), not silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from node.wire.messages import ModelName

# A request's parts are bounded beyond the body's size: 30,000 tiny messages in a 1 MiB body held the event
# loop ~230 ms each (validation, the workflow built of them), and no task of that many fits a gossip message.
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256  # a message's
MAX_TOOLS = 128  # as OpenAI allows


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Request):
    """One part of a message's content; only text parts can be run."""

    type: str
    text: str | None = None


class FunctionCall(_Request):
    """A function the model calls, with its arguments."""

    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(description="The arguments as a JSON object in a string")


class ToolCall(_Request):
    """A tool call in an assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _parts_bounded(cls, content: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(content, list) and len(content) > MAX_CONTENT_PARTS:
            raise ValueError(f"at most {MAX_CONTENT_PARTS} content parts, not {len(content)}")
        return content


class FunctionDefinition(_Request):
    """A function offered to the model: name, description, JSON Schema of its parameters."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any] | None = None


class ToolDefinition(_Request):
    """A tool offered to the model."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    """A function named by its name."""

    name: str


class NamedToolChoice(_Request):
    """A tool choice naming the function to call."""

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Request):
    """The JSON Schema a `json_schema` response must follow."""

    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """The format asked of the answer: text, any JSON object, or JSON of a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Request):
    """Options of a streamed answer."""

    include_usage: bool = False


class ChatCompletionRequest(_Request):
    """`POST /v1/chat/completions`."""

    model: ModelName
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    stream: StrictBool = False  # "yes" or 1 is no boolean: OpenAI refuses them too
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    user: str | None = Field(default=None, max_length=256)
    logprobs: bool | None = None
    # Read only to be refused (translate.py `_refuse_unsupported`): dropping them would change the answer.
    top_logprobs: int | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None


class Usage(BaseModel):
    """Tokens read and written."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The assistant's answer: text or tool calls."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    refusal: None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    """One answer of a completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    """The answer to a request without `stream`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str = Field(description="Address of the node that signed the result")


class ChunkToolCall(BaseModel):
    """A tool call in a streamed chunk."""

    index: int = 0
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    """What a streamed chunk adds to the answer."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(BaseModel):
    """One answer's part in a streamed chunk."""

    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    """A model some live node advertises."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds of the newest heartbeat that advertises it")
    owned_by: str = "compute-node network"
    nodes: int = Field(description="How many live nodes serve it")


class ModelList(BaseModel):
    """The models the gateway offers."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingRequest(_Request):
    """`POST /v1/embeddings` (answered 404: no node serves embeddings)."""

    model: ModelName
    input: str | list[str] | list[int] | list[list[int]]


class ErrorDetail(BaseModel):
    """What went wrong, as OpenAI's errors say it."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error of these routes, in OpenAI's shape."""

    error: ErrorDetail
