"""ResultInbox takes a result only for a task this publisher signed, when the node names the signer."""

from __future__ import annotations

import asyncio
import time

from node.publisher.inbox import ResultInbox
from node.wire.identity import Identity
from node.wire.results import Output, result_body, result_publisher

NODE = Identity.generate()


def answer(publisher: Identity, signer: str | None, text: str) -> object:
    now = time.time_ns()
    output = Output(text=text, public_key=publisher.public_key_compressed.hex(), prompt_tokens=1, completion_tokens=1)
    return result_body("t1", "m", output, received_at_ns=now, started_at_ns=now, ended_at_ns=now, publisher=signer)


async def test_a_result_of_another_keys_task_under_our_id_is_not_taken() -> None:
    us, squatter = Identity.generate(), Identity.generate()
    inbox = ResultInbox(us.secret)
    future = inbox.expect("t1", [NODE.address])
    squatted = answer(us, squatter.address, "SQUATTED")  # encrypted to our key: it would decrypt
    assert result_publisher(squatted) == squatter.address.lower().removeprefix("0x")  # type: ignore[arg-type]
    inbox.accept(squatted, NODE.address)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not future.done()
    inbox.accept(answer(us, "0x" + us.address.upper(), "GENUINE"), NODE.address)  # type: ignore[arg-type]
    assert future.result().text == "GENUINE"


async def test_a_result_that_names_no_signer_is_taken_as_before() -> None:
    us = Identity.generate()
    inbox = ResultInbox(us.secret)
    future = inbox.expect("t1", [NODE.address])
    inbox.accept(answer(us, None, "from an older node"), NODE.address)  # type: ignore[arg-type]
    assert future.result().text == "from an older node"
