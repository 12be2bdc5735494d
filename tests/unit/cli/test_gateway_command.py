"""`compute-node gateway`: its flags build the gateway settings; a public host without keys is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli.gateway import add_gateway_command, run_gateway
from node.gateway.settings import GatewaySettings

KEY = "test-key-0123456789abcdef"


async def test_cli_flags_build_the_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="compute-node")
    add_gateway_command(parser.add_subparsers(dest="command"))
    peer = "/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAmSoBigzQ1Sv4wPG4aic3zZFbSpPYnbPAEsFFJmuJ8qetK"
    args = parser.parse_args(["gateway", "--peer", peer, "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert run_gateway(args) == 1  # public host, no keys: refused before anything starts
    assert "api_keys" in capsys.readouterr().err
    args = parser.parse_args(["gateway", "--peer", peer, "--api-key", KEY, "--rate-limit", "30", "--port", "0"])
    settings = GatewaySettings.load(None, **{n: getattr(args, f"gateway_{n}") for n in GatewaySettings.model_fields})
    assert settings.peers == [peer] and settings.api_keys == [KEY] and settings.rate_limit == 30
