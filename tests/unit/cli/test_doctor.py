"""`compute-node doctor`'s checks, in-process, each on a real broken setup (and a healthy one)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

from config.settings import DEFAULT_MODEL, Settings
from models.registry import Registry
from node.cli.doctor.local import (
    data_dir_check,
    identity_check,
    mem_available_bytes,
    memory_check,
    model_file_checks,
    port_checks,
)
from node.cli.doctor.network import (
    _clock_check,
    bootstrap_and_clock_checks,
    public_address_check,
    remote_engine_checks,
)
from node.cli.doctor.report import Status, print_report
from node.cli.doctor.run import Readings, run_doctor
from node.wire.identity import Identity
from tests.support.heartbeats import heartbeat_message
from tests.support.remote_engines import FaultEngine, remote_entry

LOCAL_ONLY = {"runtime", "network", "remote"}


def settings_for(tmp_path: Path, **fields: object) -> Settings:
    defaults: dict[str, object] = {"http_port": 0, "listen": ["/ip4/127.0.0.1/tcp/0"]}
    return Settings(data_dir=tmp_path / "data", **{**defaults, **fields})  # type: ignore[arg-type]


def test_a_healthy_setup_passes_and_exits_0(tmp_path: Path) -> None:
    checks = run_doctor(settings_for(tmp_path), Readings(skip=LOCAL_ONLY))
    assert {c.name for c in checks} >= {"data dir", "identity key", "listen port", f"model {DEFAULT_MODEL}", "memory"}
    out = io.StringIO()
    assert print_report(checks, out) == 0, out.getvalue()
    assert "0 problem(s)" in out.getvalue()


def test_a_key_others_can_read_fails_with_chmod(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    settings.data_dir.mkdir()
    Identity.from_secret_or_file(None, settings.identity_path)
    assert identity_check(settings).status is Status.OK
    settings.identity_path.chmod(0o644)
    check = identity_check(settings)
    assert check.status is Status.FAIL and "0644" in check.detail and check.fix == f"chmod 600 {settings.identity_path}"
    out = io.StringIO()
    assert print_report(run_doctor(settings, Readings(skip=LOCAL_ONLY)), out) == 1
    assert "FAIL  identity key" in out.getvalue()


def test_a_data_dir_without_room_fails(tmp_path: Path) -> None:
    check = data_dir_check(settings_for(tmp_path), min_free=1 << 60)
    assert check.status is Status.FAIL and "GiB free" in check.detail


def test_a_taken_port_fails_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(tmp_path, listen=[f"/ip4/127.0.0.1/tcp/{port}"], http_port=port)
        checks = port_checks(settings, running=None)
        assert [c.status for c in checks] == [Status.FAIL, Status.FAIL]
        assert f"127.0.0.1:{port} is in use by another process" in checks[0].detail
        # The same ports held by a node running from this config are fine.
        held = port_checks(settings, running={"listen": [f"/ip4/127.0.0.1/tcp/{port}/p2p/x"]})
        assert [c.status for c in held] == [Status.OK, Status.OK]


def test_a_missing_model_file_fails_with_pull(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, models=["ghost"], registry={"ghost": {"path": str(tmp_path / "ghost.gguf")}})
    [check] = model_file_checks(settings)
    assert check.status is Status.FAIL and check.fix == "compute-node models pull ghost"


def test_a_damaged_model_file_fails_its_sha256(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + b"\0" * 4096)
    real_sha = Registry.builtin().get(DEFAULT_MODEL).sha256
    settings = settings_for(tmp_path, models=["m"], registry={"m": {"path": str(damaged), "sha256": real_sha}})
    [check] = model_file_checks(settings)
    assert check.status is Status.FAIL and "damaged" in check.detail and "models rm m" in (check.fix or "")


def test_models_that_do_not_fit_in_memory_fail(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert memory_check(settings, mem_available_bytes, node_running=False).status is Status.OK
    small = memory_check(settings, lambda: 64 * 1024 * 1024, node_running=False)
    assert small.status is Status.FAIL and "0.06 GiB available" in small.detail


def test_no_public_address_is_a_nat_note_not_a_failure(tmp_path: Path) -> None:
    check = public_address_check(settings_for(tmp_path, listen=["/ip4/127.0.0.1/tcp/4001"]))
    assert check.status is Status.WARN and "NAT" in check.detail and "forward TCP port 4001" in (check.fix or "")
    public = public_address_check(settings_for(tmp_path, announce=["/ip4/8.8.8.8/tcp/4001"]))
    assert public.status is Status.OK


async def test_an_unreachable_bootstrap_peer_fails(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: a dial is refused
        peer = Identity.generate()
        from node.p2p.host import P2PHost

        peer_id = P2PHost(peer.secret, ["/ip4/127.0.0.1/tcp/0"]).peer_id
        settings = settings_for(tmp_path, bootstrap=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"])
        checks = await bootstrap_and_clock_checks(settings, listen_s=1)
    assert checks[0].status is Status.FAIL and f"tcp/{port}" in checks[0].detail
    assert checks[1].name == "clock" and checks[1].status is Status.WARN


async def test_a_remote_engine_down_fails_and_up_passes(tmp_path: Path) -> None:
    async with FaultEngine() as engine:
        settings = settings_for(tmp_path, models=["far"], registry={"far": remote_entry(engine.base_url)})
        [up] = await remote_engine_checks(settings)
        assert up.status is Status.OK
        engine.models_up = False
        [down] = await remote_engine_checks(settings)
    assert down.status is Status.FAIL and engine.base_url in down.detail


def _heartbeat(identity: Identity, at_ns: int) -> bytes:
    return heartbeat_message(identity, ["m"], free=1, at_ns=at_ns)


def _restamped(message: bytes, envelope_ns: int) -> bytes:
    """The same signed heartbeat with another envelope timestamp (which its signature does not cover)."""
    envelope = json.loads(message)
    envelope["timestamp"] = envelope_ns
    return json.dumps(envelope).encode()


async def _clock(messages: list[bytes], trusted: set[str]) -> tuple[Status, str]:
    queue: asyncio.Queue[SimpleNamespace] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(SimpleNamespace(data=message))
    check = await _clock_check(queue, 0.2, trusted)
    return check.status, check.detail


async def test_the_clock_is_read_from_signed_heartbeats_of_the_bootstrap_peers() -> None:
    # Anyone can relay a heartbeat with its envelope re-stamped, or heartbeat from keys of its own: neither
    # may turn a right clock into a failure.
    honest = [Identity.generate() for _ in range(3)]
    now = time.time_ns()
    heard = [_heartbeat(identity, now) for identity in honest]
    restamped = [_restamped(message, now + 55 * 10**9) for message in heard]
    strangers = [_heartbeat(Identity.generate(), now - 540 * 10**9) for _ in range(5)]
    bootstrap = {honest[0].peer_id}

    status, detail = await _clock(heard + restamped, bootstrap)
    assert status is Status.OK, detail
    status, detail = await _clock(heard + strangers, bootstrap)
    assert status is Status.OK and "bootstrap" in detail, detail
    # No bootstrap peer heard: other peers' clocks are only a warning.
    status, detail = await _clock(strangers, bootstrap)
    assert status is Status.WARN, detail
    # A clock that is truly off, by the bootstrap peer's own signed heartbeat, still fails.
    status, detail = await _clock([_heartbeat(honest[0], now - 120 * 10**9)], bootstrap)
    assert status is Status.FAIL, detail


def test_an_unknown_model_name_is_a_failed_check_not_a_traceback(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, models=["smollm2:135"])  # a typo: UnknownModelError is no RegistryError
    [check] = model_file_checks(settings)
    assert check.status is Status.FAIL and "smollm2:135" in check.detail
    assert memory_check(settings, mem_available_bytes, node_running=False).status in (Status.OK, Status.WARN)


def test_an_invalid_registry_entry_is_one_line_for_doctor_and_models(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = ["--registry", json.dumps({"mine": {"backend": "nonsense"}}), "--data-dir", str(tmp_path)]
    for command in (["doctor", "--skip", "network"], ["models", "list"]):
        done = subprocess.run(  # a child: the commands configure logging for the whole process
            [sys.executable, "-c", "import sys; from node.cli.main import main; sys.exit(main(sys.argv[1:]))"]
            + [*command, *bad],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert done.returncode == 1, command
        assert "invalid setting 'registry'" in done.stderr and "Traceback" not in done.stderr, done.stderr
