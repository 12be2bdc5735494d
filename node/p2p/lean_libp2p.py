"""What this package leaves out of py-libp2p (pinned 0.8.1): QUIC, mDNS, AutoTLS, WebSocket and DNS-over-QUIC.

py-libp2p imports every transport and discovery service when it is first imported,
whether a host uses them or not. The node speaks TCP + Noise + Yamux + gossipsub only,
so `install()`, called by node/p2p/__init__.py before anything imports libp2p, puts
stand-ins in place of four subpackages it never runs:

- `libp2p.transport.quic` (aioquic): a QUIC transport, built only for /udp/../quic addresses;
- `libp2p.discovery.mdns` (zeroconf): local-network discovery, started only with enable_mDNS;
- `libp2p.security.tls.autotls` (an ACME client: requests, httpx): run only by
  `initiate_autotls_procedure`;
- `libp2p.transport.websocket` (trio-websocket, wsproto): a WebSocket transport, built only
  for /ws and /wss addresses;

and switches off dnspython's DNS-over-QUIC (`dns._features.force`, dnspython's own
switch), which would load aioquic again through multiaddr's DNS resolver.

Measured on import of the daemon (`node.daemon.server`): 98.8 -> 83.8 MiB RSS, 1,519 ->
1,291 modules (QUIC, mDNS, AutoTLS); WebSocket since: 89.3 -> 87.1 MiB, 1,359 -> 1,333 modules
(another machine). The settings refuse /ws, /wss and /tls addresses (config/layered.py).
Any name imported from a stand-in is a class (an exception class, so that `except`
clauses naming QUIC's errors still work, never matching); using it (calling it,
instantiating it) raises UnavailableFeatureError naming the feature, so nothing
fails quietly. tests/project/test_daemon_imports.py checks that the heavy packages stay out,
tests/unit/p2p/test_lean_libp2p.py the refusals and that a host still dials and gossips.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

LEFT_OUT = {
    "libp2p.transport.quic": "py-libp2p's QUIC transport (the node listens and dials on /tcp addresses)",
    "libp2p.discovery.mdns": "py-libp2p's mDNS discovery",
    "libp2p.security.tls.autotls": "py-libp2p's AutoTLS (ACME certificates)",
    "libp2p.transport.websocket": "py-libp2p's WebSocket transport (the node listens and dials on /tcp addresses)",
}


class UnavailableFeatureError(RuntimeError):
    """A part of py-libp2p that node/p2p/lean_libp2p.py leaves out was used."""


class _StandInLoader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the left-out subpackages (and everything below them) and makes stand-in modules."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if _feature(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _stand_in(spec.name, _feature(spec.name) or spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: a stand-in's names are made when they are imported."""


def _feature(name: str) -> str | None:
    for prefix, feature in LEFT_OUT.items():
        if name == prefix or name.startswith(prefix + "."):
            return feature
    return None


def _stand_in(name: str, feature: str) -> types.ModuleType:
    module = types.ModuleType(name, f"Stand-in for {name}: {feature} is left out (node/p2p/lean_libp2p.py).")
    module.__path__ = []

    def unavailable_name(attr: str) -> type:
        if attr.startswith("__"):
            raise AttributeError(attr)

        def refuse(cls: type, *args: Any, **kwargs: Any) -> Any:
            raise UnavailableFeatureError(
                f"{name}.{attr}: {feature} is left out of compute-node (node/p2p/lean_libp2p.py)"
            )

        # An Exception subclass: libp2p's stream code names QUIC's errors in `except` clauses (never met).
        stand_in = type(attr, (Exception,), {"__new__": refuse, "__module__": name})
        setattr(module, attr, stand_in)
        return stand_in

    module.__getattr__ = unavailable_name  # type: ignore[method-assign]
    return module


def install() -> bool:
    """Put the stand-ins in place, unless libp2p is already imported (then nothing changes); whether
    they are in place."""
    if "libp2p" in sys.modules:
        return any(isinstance(f, _StandInLoader) for f in sys.meta_path)
    if not any(isinstance(f, _StandInLoader) for f in sys.meta_path):
        sys.meta_path.insert(0, _StandInLoader())
    import dns._features  # dnspython, which multiaddr imports: its documented switch

    dns._features.force("doq", False)
    return True
