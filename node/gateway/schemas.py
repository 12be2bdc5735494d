"""The JSON shapes of the gateway's HTTP API; FastAPI turns them into the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from node.publisher.reputation_records import ReputationView
from node.wire.messages import MAX_MODELS, Address, ModelName, TaskBody

TaskStatus = Literal["pending", "done", "error", "expired"]


def _public_key(value: str) -> str:
    """A secp256k1 public key in hex (33, 64 or 65 bytes), checked as the nodes check it."""
    return TaskBody._valid_public_key(value)


PublicKeyHex = Annotated[str, AfterValidator(_public_key)]


class TaskRequest(BaseModel):
    """One task to publish."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(
        description="The workflow program (the engine's JSON format); validated before publishing"
    )
    models: list[ModelName] = Field(min_length=1, max_length=MAX_MODELS, description="Acceptable models")
    prompt: str | None = Field(default=None, description="The task's input (memory key __input)")
    timeout: float | None = Field(default=None, gt=0, description="Seconds until the task expires (default: gateway's)")
    nodes: list[Address] | None = Field(
        default=None,
        min_length=1,
        description="Addresses of the nodes to pick; default: one the gateway chooses by measured reputation",
    )
    public_key: PublicKeyHex | None = Field(
        default=None, description="Your secp256k1 public key (hex): the result is encrypted to it end to end"
    )


class BatchRequest(BaseModel):
    """Several tasks at once; all are accepted or none."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskRequest] = Field(min_length=1)


class Accepted(BaseModel):
    """A task the gateway accepted and is publishing."""

    id: str
    status: TaskStatus = "pending"


class BatchAccepted(BaseModel):
    """The tasks of a batch, in request order."""

    tasks: list[Accepted]


class TaskView(BaseModel):
    """A task's state. `result` is the plaintext; `ciphertext` (hex ECIES) when a public key was given."""

    id: str
    status: TaskStatus
    result: str | None = None
    ciphertext: str | None = None
    error: str | None = None
    model: str | None = None
    node: str | None = Field(default=None, description="Address of the node that signed the result")
    stats: dict[str, Any] | None = Field(default=None, description="The node's timings (Unix ns, wire names)")
    created_at: float = Field(description="Unix seconds")
    updated_at: float = Field(description="Unix seconds")


class TaskList(BaseModel):
    """Tasks found by id; `missing` lists ids unknown to this key (or already deleted)."""

    tasks: list[TaskView]
    missing: list[str] = []


class Capacity(BaseModel):
    """Free and total task places."""

    free: int
    max: int


class NodeView(BaseModel):
    """A node the gateway knows from its heartbeats."""

    address: str
    peer_id: str
    models: list[str]
    capacity: Capacity
    model_capacity: dict[str, Capacity] | None = Field(
        default=None,
        exclude_if=lambda places: places is None,
        description="Free and total task places per model (its heartbeat's `modelCapacity`, clamped, for the "
        "models it lists); absent when its heartbeat did not say them",
    )
    tps: dict[str, float]
    last_heartbeat: float = Field(description="Unix seconds of its last heartbeat")
    reputation: ReputationView = Field(description="What this gateway measured of it (the prior when nothing yet)")


class NodeList(BaseModel):
    """Live nodes, at most MAX_LISTED_NODES: those this gateway measured serving first, then the most
    recently heard (anyone can make keys); `total` counts them all."""

    nodes: list[NodeView]
    total: int = Field(default=0, description="Live nodes seen by heartbeat, listed or not")


class ReputationList(BaseModel):
    """Nodes the gateway remembers measuring, live or not, best score first: at most MAX_LISTED_NODES,
    those that answered it first (anyone can make keys); `total` counts them all."""

    nodes: list[ReputationView]
    total: int = Field(default=0, description="Nodes remembered, listed or not")


class ErrorBody(BaseModel):
    """Every error response: what is wrong (for 422: the field path, then the problem)."""

    detail: str


class Health(BaseModel):
    """The gateway is up, and how many live nodes it sees."""

    status: Literal["ok"] = "ok"
    nodes: int = Field(description="Live nodes seen by heartbeat")
