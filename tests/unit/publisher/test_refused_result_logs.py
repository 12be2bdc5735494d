"""Any gossip peer, with any key and not picked, can publish results under the id of a task it saw on gossip.
The inbox refuses them, and logs one line per reason a window, saying how many were not logged since: 3000
forged results were 3000 WARNING lines (a hostile review's find). So does the Client for an observer that fails."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from node.publisher.client import Client
from node.publisher.inbox import ResultInbox
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import Inbound, decode
from node.wire.messages import ResultBody, encode_body
from node.wire.results import Output, result_body
from node.wire.topics import RESULTS_TOPIC
from tests.support.gossip_nodes import MODEL

US, PICKED = Identity.generate(), Identity.generate()
FORGED = 1000
WINDOW_S = 0.2
NOT_PICKED = "result from a node that was not picked"
ANOTHER_PUBLISHER = "result of another publisher's task under our task id"


def forged(task_id: str, i: int, publisher: str | None = None) -> ResultBody:
    """A result for `task_id` encrypted to our key, each one different (`i`)."""
    now = time.time_ns()
    output = Output(text=f"forged {i}", public_key=US.public_key_compressed.hex(), prompt_tokens=1, completion_tokens=1)
    return result_body(task_id, MODEL, output, received_at_ns=now, started_at_ns=now, ended_at_ns=now + i,
                       publisher=publisher)  # fmt: skip


def lines(logs: list[dict[str, object]], event: str) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == event]


async def test_forged_results_from_nodes_not_picked_are_logged_once_a_window_with_the_count_held_back() -> None:
    inbox = ResultInbox(US.secret, log_window_s=WINDOW_S)
    future = inbox.expect("t1", [PICKED.address])
    forgers = [Identity.generate().address for _ in range(10)]
    with capture_logs() as logs:
        for i in range(FORGED):
            inbox.accept(forged("t1", i), forgers[i % len(forgers)])
        assert len(lines(logs, NOT_PICKED)) == 1
        time.sleep(WINDOW_S)
        inbox.accept(forged("t1", FORGED), forgers[0])
    logged = lines(logs, NOT_PICKED)
    assert len(logged) == 2 and logged[0]["log_level"] == "warning"
    assert logged[0]["task_id"] == "t1" and logged[0]["not_logged_since"] == 0
    assert logged[1]["not_logged_since"] == FORGED - 1
    assert not future.done()  # the picked node's result is still awaited


async def test_forged_results_of_another_publishers_task_are_logged_once_a_window_with_the_count_held_back() -> None:
    inbox = ResultInbox(US.secret, log_window_s=WINDOW_S)
    future = inbox.expect("t1", None)  # any node's result (an earlier session's task, say)
    squatter = Identity.generate().address
    with capture_logs() as logs:
        for i in range(FORGED):
            inbox.accept(forged("t1", i, publisher=squatter), squatter)
        time.sleep(WINDOW_S)
        inbox.accept(forged("t1", FORGED, publisher=squatter), squatter)
    logged = lines(logs, ANOTHER_PUBLISHER)
    assert [entry["not_logged_since"] for entry in logged] == [0, FORGED - 1]
    assert all(entry["task_id"] == "t1" for entry in logged)
    assert not future.done()


async def test_an_observer_that_fails_on_every_message_is_logged_once_a_window() -> None:
    """The gateway's observer reads its store for every result any peer sends: while it fails, one traceback."""

    def failing(inbound: Inbound) -> None:
        raise RuntimeError("the store cannot be read")

    client = Client(peers=[], on_message=failing)
    forger = Identity.generate()
    inbound = decode(RESULTS_TOPIC, seal(forger, RESULTS_TOPIC, encode_body(forged("t1", 0))))
    with capture_logs() as logs:
        for _ in range(FORGED):
            client._on_result(inbound)
    assert [entry["not_logged_since"] for entry in lines(logs, "message observer failed")] == [0]
