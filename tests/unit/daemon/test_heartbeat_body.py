"""The heartbeat body: free and max task places in all (`capacity`) and per model (`modelCapacity`).

Each model has places of its own (its execution process's slots and queue): with model a full and
model b free, the total alone still shows free places, and publishers sent a-only tasks that the node
answered busy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from node.daemon.admission import AcceptedTask, Admission
from node.daemon.build import free_places, free_places_by_model
from node.daemon.heartbeat import Heartbeat
from node.daemon.journal import Journal
from node.wire.identity import Identity
from node.wire.messages import decode_heartbeat, encode_body
from tests.support.accepted_tasks import accepted_task

IDENTITY = Identity.generate()


class _Host:
    """What a heartbeat reads of its host: the peer id."""

    peer_id = IDENTITY.peer_id


class _Scene:
    """Two models, a and b, one running place and one queue place each; tasks run until released."""

    def __init__(self, journal: Journal, advertised: list[str] | None = None) -> None:
        self.release = asyncio.Event()
        self.admission = Admission(self._run, self._abandon, {"a": 1, "b": 1}, max_queue=1)
        self.advertised = advertised or ["a", "b"]
        self.heartbeat = Heartbeat(
            IDENTITY,
            _Host(),  # type: ignore[arg-type]
            lambda: list(self.advertised),
            capacity=lambda: free_places(self.admission, journal, self.advertised),
            pending=lambda: self.admission.pending,
            tps=dict,
            interval=30.0,
            model_capacity=lambda models: free_places_by_model(self.admission, journal, models),
        )

    async def _run(self, _: AcceptedTask) -> None:
        await self.release.wait()

    async def _abandon(self, *_: object) -> None:
        pass

    def wire(self) -> dict:
        """The body as it goes on the wire (and as a publisher decodes it)."""
        data = encode_body(self.heartbeat.body())
        decode_heartbeat(data)
        return json.loads(data)


@pytest.fixture
def journal(tmp_path: Path):
    journal = Journal.open(tmp_path / "journal.sqlite3")
    yield journal
    journal.close()


async def test_each_model_says_its_own_free_places_and_the_total_stays(journal: Journal) -> None:
    scene = _Scene(journal)
    assert scene.wire()["modelCapacity"] == {"a": {"free": 2, "max": 2}, "b": {"free": 2, "max": 2}}
    scene.admission.admit(accepted_task("t1", "a"))
    scene.admission.admit(accepted_task("t2", "a"))  # a: one running, one queued: full
    body = scene.wire()
    assert body["capacity"] == {"free": 2, "max": 4}  # what Dria's SDK and 0.3 publishers read, unchanged
    assert body["modelCapacity"] == {"a": {"free": 0, "max": 2}, "b": {"free": 2, "max": 2}}
    assert not scene.admission.would_admit("a") and scene.admission.would_admit("b")
    scene.release.set()
    await scene.admission.drain(timeout=5)
    scene.admission.draining = False
    assert scene.wire()["modelCapacity"] == {"a": {"free": 2, "max": 2}, "b": {"free": 2, "max": 2}}


async def test_only_the_advertised_models_have_entries(journal: Journal) -> None:
    scene = _Scene(journal, advertised=["a"])  # b out of service (its process down): in no heartbeat
    body = scene.wire()
    assert body["models"] == ["a"] and body["modelCapacity"] == {"a": {"free": 2, "max": 2}}
    assert body["capacity"] == {"free": 2, "max": 2}
    scene.advertised = []
    assert "modelCapacity" not in scene.wire()


async def test_a_leaving_paused_or_journal_failing_node_offers_no_place_of_any_model(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = _Scene(journal)
    none_free = {"a": {"free": 0, "max": 2}, "b": {"free": 0, "max": 2}}
    scene.heartbeat.leaving = True
    assert scene.wire()["modelCapacity"] == none_free and scene.wire()["capacity"]["free"] == 0
    scene.heartbeat.leaving = False
    scene.admission.draining = True
    assert scene.wire()["modelCapacity"] == none_free
    scene.admission.draining = False
    monkeypatch.setattr(journal, "failing", lambda *_, **__: "database or disk is full")
    assert scene.wire()["modelCapacity"] == none_free and scene.wire()["capacity"] == {"free": 0, "max": 4}


def test_a_heartbeat_without_the_per_model_source_stays_in_the_0_3_form() -> None:
    heartbeat = Heartbeat(IDENTITY, _Host(), lambda: ["a"], lambda: (1, 1), lambda: 0, dict, 30.0)  # type: ignore[arg-type]
    assert "modelCapacity" not in json.loads(encode_body(heartbeat.body()))
