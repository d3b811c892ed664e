"""Crash-test subject: append windows to an outbox and sync them continuously, until killed.

    python -m tests.cloud.crash_writer DIR URL BASE_NS START END TAGS

Prints ``committed <i>`` after window i is committed to the outbox, and ``drained`` once all
windows up to END (exclusive) are appended and the outbox is empty. The token comes from
LINESENTRY_TEST_TOKEN.
"""

from __future__ import annotations

import asyncio
import sys

from controller.outbox import Outbox
from controller.sync import SyncConfig, SyncWorker
from tests.cloud.helpers import window_records


async def main(directory: str, url: str, base_ns: int, start: int, end: int, tags: int) -> None:
    cfg = SyncConfig(url=url, org="o", bucket="b", token_env="LINESENTRY_TEST_TOKEN", batch_size=3 * tags,
                     timeout_s=2.0, backoff_initial_s=0.01, backoff_cap_s=0.1)
    with Outbox(directory) as ob:
        async with SyncWorker(cfg, ob) as worker:
            for i in range(start, end):
                result = await ob.append_async(window_records(base_ns, i, tags))
                assert result.ok, result.error
                print(f"committed {i}", flush=True)
                worker.wake()
                await asyncio.sleep(0.01)  # the pace of the producer, not a wait for a condition
            while ob.backlog()[0]:
                await asyncio.sleep(0.01)
            print("drained", flush=True)
            await asyncio.Event().wait()  # keep running until killed or terminated


if __name__ == "__main__":
    d, u, b, s, e, t = sys.argv[1:7]
    asyncio.run(main(d, u, int(b), int(s), int(e), int(t)))
