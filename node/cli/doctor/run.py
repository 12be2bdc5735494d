"""`compute-node doctor`: the checks in order, each skippable, with the readings they use."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from node.cli.doctor.local import (
    data_dir_check,
    identity_check,
    mem_available_bytes,
    memory_check,
    model_file_checks,
    port_checks,
    runtime_check,
)
from node.cli.doctor.network import bootstrap_and_clock_checks, public_address_check, remote_engine_checks
from node.cli.doctor.report import Check

STATUS_TIMEOUT_S = 3.0


@dataclass
class Readings:
    """What the checks read from the machine; tests give their own."""

    mem_available: Callable[[], int] = mem_available_bytes
    listen_s: float = 10.0
    skip: set[str] = field(default_factory=set)


def running_node_status(settings: Settings) -> dict[str, Any] | None:
    """/status of a node answering on this config's HTTP port, or None."""
    import httpx

    if not settings.http_enabled:
        return None
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    host = f"[{host}]" if ":" in host else host
    try:
        answer = httpx.get(f"http://{host}:{settings.http_port}/status", timeout=STATUS_TIMEOUT_S)
        body = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) and "peer_id" in body else None


def run_doctor(settings: Settings, readings: Readings | None = None) -> list[Check]:
    """Every check not skipped, in order."""
    readings = readings or Readings()
    skip = readings.skip
    running = running_node_status(settings)
    checks: list[Check] = []
    if "runtime" not in skip:
        checks.append(runtime_check(settings))
    if "data" not in skip:
        checks += [data_dir_check(settings), identity_check(settings)]
    if "ports" not in skip:
        checks += port_checks(settings, running)
    if "models" not in skip:
        checks += model_file_checks(settings)
    if "memory" not in skip:
        checks.append(memory_check(settings, readings.mem_available, running is not None))
    if "addresses" not in skip:
        checks.append(public_address_check(settings))
    if "network" not in skip:
        checks += asyncio.run(bootstrap_and_clock_checks(settings, readings.listen_s))
    if "remote" not in skip:
        checks += asyncio.run(remote_engine_checks(settings))
    return checks
