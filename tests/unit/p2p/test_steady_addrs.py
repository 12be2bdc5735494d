"""SteadyAddrs: a host's addresses are rebuilt once per refresh interval, not on every call."""

from __future__ import annotations

from multiaddr import Multiaddr

from node.p2p.steady_addrs import SteadyAddrs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_addresses_are_rebuilt_only_once_the_copy_is_refresh_s_old() -> None:
    listening = [Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    builds: list[float] = []
    clock = Clock()

    def get_addrs() -> list[Multiaddr]:
        builds.append(clock.now)
        return list(listening)

    steady = SteadyAddrs(get_addrs, refresh_s=5.0, clock=clock)
    assert steady() == listening and steady() == listening
    assert builds == [100.0]
    listening.append(Multiaddr("/ip4/10.0.0.2/tcp/4001"))  # e.g. an observed address confirmed
    clock.now = 104.9
    assert steady() == listening[:1]  # still the copy: at most refresh_s old
    clock.now = 105.0
    assert steady() == listening
    assert builds == [100.0, 105.0]


def test_each_caller_gets_a_list_of_its_own() -> None:
    steady = SteadyAddrs(lambda: [Multiaddr("/ip4/127.0.0.1/tcp/4001")], refresh_s=60.0, clock=Clock())
    mine = steady()
    mine.clear()
    assert steady() == [Multiaddr("/ip4/127.0.0.1/tcp/4001")]
