"""Doctor checks of the network: bootstrap peers, public addresses, clock skew, remote engines."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import statistics
import time

from config.settings import Settings
from node.cli.doctor.report import Check, fail, ok, warn

DIAL_TIMEOUT_S = 10.0
SKEW_FAIL_S = 30.0  # peers refuse envelopes over 60 s ahead: half of that is already trouble
SKEW_WARN_S = 5.0


async def bootstrap_and_clock_checks(settings: Settings, listen_s: float) -> list[Check]:
    """Dial every bootstrap peer for real, then listen `listen_s` s for heartbeats to measure clock skew."""
    from node.p2p.host import P2PHost
    from node.wire.identity import Identity
    from node.wire.topics import HEARTBEAT_TOPIC

    if not settings.bootstrap:
        return [
            warn(
                "bootstrap",
                "no bootstrap peers: the node meets only peers that dial it",
                "set bootstrap to one or more peers' multiaddrs",
            ),
            warn("clock", "not measured: no peers to compare with"),
        ]
    host = P2PHost(Identity.generate().secret, ["/ip4/0.0.0.0/tcp/0"])
    await host.start()
    checks = []
    try:
        heartbeats = await host.subscribe(HEARTBEAT_TOPIC)
        for addr in settings.bootstrap:
            checks.append(await _dial_check(host, addr))
        if any(c.status.value == "OK" for c in checks):
            from node.p2p.connector import peer_id_of_multiaddr

            trusted = {p for p in map(peer_id_of_multiaddr, settings.bootstrap) if p is not None}
            checks.append(await _clock_check(heartbeats, listen_s, trusted))
        else:
            checks.append(warn("clock", "not measured: no bootstrap peer answered"))
    finally:
        with contextlib.suppress(Exception):
            await host.stop()
    return checks


async def _dial_check(host, addr: str) -> Check:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    try:
        peer = await host.connect(addr, timeout=DIAL_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failed dial is this check's finding
        return fail(
            "bootstrap",
            f"{addr} did not answer within {DIAL_TIMEOUT_S:g} s: {str(exc)[:200] or type(exc).__name__}",
            "check the address and that the peer runs; a firewall between must let TCP through",
        )
    return ok("bootstrap", f"{addr} answered ({peer[:16]}..., {time.monotonic() - started:.2f} s)")


async def _clock_check(heartbeats: asyncio.Queue, listen_s: float, trusted: set[str] | None = None) -> Check:  # type: ignore[type-arg]
    """This clock against the signed body timestamps of the heartbeats heard in `listen_s` s.

    The envelope's `timestamp` is outside the signature (anyone relaying a heartbeat can re-stamp it), and
    anyone can make keys that heartbeat: the body's signed timestamp is read, the newest per signer (an old
    heartbeat replayed cannot pull it back), and only the bootstrap peers' (`trusted`, their peer ids) count
    when any of them was heard. Measured against other peers alone, a wrong clock is a warning, never a failure.
    """
    from node.wire.inbound import InboundError, decode
    from node.wire.messages import HeartbeatBody
    from node.wire.topics import HEARTBEAT_TOPIC
    from node.wire.wire_time import ns_from_wire

    newest: dict[str, tuple[int, int, str]] = {}  # signer -> (signed body timestamp, received, peer id)
    deadline = time.monotonic() + listen_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(heartbeats.get(), left)
        except TimeoutError:
            break
        received = time.time_ns()
        try:
            stamped = int(ns_from_wire(json.loads(message.data)["timestamp"]))
            inbound = decode(HEARTBEAT_TOPIC, message.data, now_ns=stamped)  # signature and body checked
        except (InboundError, ValueError, KeyError, TypeError):
            continue
        body = inbound.body
        assert isinstance(body, HeartbeatBody)
        if inbound.sender not in newest or body.timestamp > newest[inbound.sender][0]:
            newest[inbound.sender] = (body.timestamp, received, body.peer_id)
    if not newest:
        return warn("clock", f"not measured: no heartbeat heard in {listen_s:g} s", "run doctor again with --hear 60")
    known = [(t, r) for t, r, peer in newest.values() if trusted and peer in trusted]
    samples = known or [(t, r) for t, r, _ in newest.values()]
    median = statistics.median((t - r) / 1e9 for t, r in samples)
    whose = "of bootstrap peers" if known else "of peers, none a bootstrap peer: anyone can sign heartbeats"
    detail = f"peers' clocks are {median:+.1f} s from this one (median of {len(samples)} signed heartbeats {whose})"
    if abs(median) > SKEW_FAIL_S and known:
        return fail("clock", detail, "sync this clock: `timedatectl set-ntp true` (or chrony/ntpd)")
    if abs(median) > SKEW_WARN_S:
        return warn("clock", detail, "sync this clock: `timedatectl set-ntp true`")
    return ok("clock", detail)


def public_address_check(settings: Settings) -> Check:
    """Which addresses the node would advertise are public; a NAT note when none is."""
    from node.p2p.announce import advertised_addrs

    addrs = [a.removesuffix("/p2p/x") for a in advertised_addrs(settings.listen, "x", settings.announce)]
    public = [a for a in addrs if _is_public(a)]
    if public:
        return ok("public address", ", ".join(public))
    port = next((a.split("/")[4] for a in addrs if len(a.split("/")) > 4), "4001")
    return warn(
        "public address",
        f"none of {', '.join(addrs) or 'no address'} is public: behind NAT, publishers cannot dial this node "
        "(tasks still come over gossip, through the peers it dials)",
        f"forward TCP port {port} on the router to this machine and set announce = "
        f'["/ip4/<your public IP>/tcp/{port}"]',
    )


def _is_public(addr: str) -> bool:
    parts = addr.split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return parts[1:2] in (["dns4"], ["dns6"], ["dns"])
    try:
        return ipaddress.ip_address(parts[2]).is_global
    except ValueError:
        return False


async def remote_engine_checks(settings: Settings) -> list[Check]:
    """Every configured model served by a remote engine answers its model list."""
    from models.registry import Registry
    from models.remote.openai import RemoteModel
    from models.requests import ModelError

    registry = Registry.builtin().with_overrides(settings.registry)
    checks = []
    for name in settings.models:
        spec = registry.get(name) if name in registry else None
        if spec is None or not spec.is_remote:
            continue
        try:
            model = await RemoteModel.open(spec, default_n_ctx=settings.n_ctx)
        except ModelError as exc:
            checks.append(fail(f"remote {name}", str(exc), "set the entry's api_key or api_key_env"))
            continue
        try:
            up = await model.check_health()
        finally:
            await model.close()
        if up:
            checks.append(ok(f"remote {name}", f"{spec.base_url} answers"))
        else:
            checks.append(
                fail(
                    f"remote {name}",
                    f"the engine at {spec.base_url} does not answer its model list",
                    f"start the engine at {spec.base_url}, or remove {name} from models",
                )
            )
    return checks
