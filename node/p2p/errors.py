"""The P2P layer's errors: the Trio side's (`P2PServiceError` and its kinds) and those the asyncio side raises."""

from __future__ import annotations


class P2PServiceError(Exception):
    """A P2P operation failed on the Trio side; the message names the address, topic or limit involved."""


class HostileRpcServiceError(P2PServiceError):
    """A peer's pubsub RPC could not be handled (not protobuf, say): its stream is dropped, the host goes on."""


class NoMeshPeersServiceError(P2PServiceError):
    """A publish that needs mesh peers found none for its topic; nothing was sent."""


class StreamTimeoutServiceError(P2PServiceError):
    """Opening a stream (dial, negotiation, first write) did not finish in time: the peer may be frozen."""


class StreamRefusedServiceError(P2PServiceError):
    """A stream could not be opened on a live connection: the peer is there, but reset or refused the stream."""


class P2PError(Exception):
    """A P2P operation failed (listen, dial, publish...); the message names the problem."""


class MessageTooLargeError(P2PError):
    """The message exceeds the gossip size limit; nothing was sent."""


class StreamTimeoutError(P2PError):
    """`open_stream` did not finish in time (the peer answered the dial but not the stream: frozen, overloaded)."""


class StreamRefusedError(P2PError):
    """`open_stream` reached the peer, which reset or refused the stream (past its stream limits, or it does not
    speak the protocol): unlike a failed dial, no sign that the peer is gone."""


class NoMeshPeersError(P2PError):
    """`publish(..., require_mesh=True)` found no peer in the topic's mesh; nothing was sent."""


def first_service_error(error: BaseException | None) -> P2PServiceError | None:
    """The P2PServiceError in `error`, which Trio may have wrapped in exception groups."""
    if isinstance(error, P2PServiceError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            if (found := first_service_error(inner)) is not None:
                return found
    return None


def is_nursery_closed(exc: BaseException | None) -> bool:
    """Trio's error for a task spawned into a nursery that closed (py-libp2p's services, while they stop);
    a group of nothing else counts too."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_nursery_closed(inner) for inner in exc.exceptions)
    return isinstance(exc, RuntimeError) and "Nursery is closed" in str(exc)


def root_cause(error: BaseException) -> str:
    """What a py-libp2p dial error was at bottom ("Connection refused", a handshake's complaint), for an operator:
    its top reads "no addresses established a successful connection (with exceptions)" whatever the reason."""
    deepest = error
    for _ in range(32):  # chains are a few links; a cycle must not hang
        inner: BaseException | None = deepest.__cause__ or deepest.__context__
        grouped = getattr(deepest, "exceptions", None) or getattr(deepest, "errors", None)  # groups, MultiError
        if inner is None and isinstance(grouped, list | tuple) and grouped and isinstance(grouped[0], BaseException):
            inner = grouped[0]
        if inner is None:
            break
        deepest = inner
    if isinstance(deepest, OSError) and deepest.strerror:
        return deepest.strerror
    return str(deepest) or type(deepest).__name__
