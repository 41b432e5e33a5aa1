"""A NATS responder that answers at once, for the authorize benchmark's raw baseline:
``python -m bench.echo_responder NATS_URL SUBJECT``. It runs as its own process (as the ledger
service does) with uvloop and nats-py, and replies with an approval-shaped body, so the
baseline is the messaging round trip with no ledger work at all."""

from __future__ import annotations

import asyncio
import signal
import sys

import nats
import uvloop
from nats.aio.msg import Msg

REPLY = b'{"approved":true,"hold_id":"echo","amount":"0.0395","currency":"GBP"}'


async def serve(nats_url: str, subject: str) -> None:
    nc = await nats.connect(nats_url)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)

    async def answer(msg: Msg) -> None:
        await msg.respond(REPLY)

    await nc.subscribe(subject, cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await stopping.wait()
    await nc.drain()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1], sys.argv[2]))
