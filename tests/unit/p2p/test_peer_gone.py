"""`on_peer_gone`: a host hears when a peer's last connection to it closed, and of no peer it was not connected to;
`on_peer_back`: when a connection to a peer opens."""

from __future__ import annotations

import asyncio

from tests.support.p2p_hosts import HostFactory, link, wait_until


async def test_the_host_hears_of_a_connected_peer_that_went_and_not_of_one_it_never_met(make_host: HostFactory) -> None:
    gone: list[str] = []
    watcher = await make_host(on_peer_gone=gone.append)
    leaving, stranger, staying = await make_host(), await make_host(), await make_host()
    await link(watcher, leaving)
    await link(watcher, staying)
    await link(stranger, leaving)  # connected to a peer of ours, never to us
    await stranger.stop()
    await leaving.stop()  # its connections close (a killed peer's close looks the same to us)

    async def heard() -> bool:
        return leaving.peer_id in gone

    await wait_until(heard, "the watcher to hear that the peer went")
    await asyncio.sleep(0.3)
    assert gone == [leaving.peer_id]  # once; neither the stranger nor the peer still connected


async def test_the_host_hears_of_each_peer_that_connects_whoever_dialled(make_host: HostFactory) -> None:
    back: list[str] = []
    watcher = await make_host(on_peer_gone=lambda _: None, on_peer_back=back.append)
    dialled, dialling = await make_host(), await make_host()
    await link(dialled, watcher)  # we dial it
    await link(watcher, dialling)  # it dials us

    async def heard() -> bool:
        return {dialled.peer_id, dialling.peer_id} <= set(back)

    await wait_until(heard, "the watcher to hear of both connections")
    assert set(back) == {dialled.peer_id, dialling.peer_id}
