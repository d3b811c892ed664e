"""A toy sink, whole in one module: records appended as JSON lines to a file.

It proves the sink contract: this module plus one registration (`controller.sinks.register(PLUGIN)`,
or an entry point in the group ``linesentry.sinks``) is all a new sink needs; the outbox, retry,
backoff, dead letters, alarms and metrics come from the shared worker. A missing directory (an
unmounted disk) is a transient failure: the records stay pending until it appears.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from controller.records import Record, encode
from controller.sinks import Retryable, SinkPlugin
from controller.sinks.config import SyncConfig


class JsonlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path


class JsonlSink:
    name = "jsonl"

    def __init__(self, config: JsonlConfig) -> None:
        self.path = config.path

    async def send(self, records: Sequence[Record]) -> None:
        try:
            await asyncio.to_thread(self._append, encode(records) + "\n")
        except OSError as exc:
            raise Retryable(f"{self.path}: {exc.strerror}") from exc

    def _append(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    async def close(self) -> None:
        pass


def _create(config: BaseModel, sync: SyncConfig) -> JsonlSink:
    assert isinstance(config, JsonlConfig)
    return JsonlSink(config)


PLUGIN = SinkPlugin("jsonl", JsonlConfig, _create, "JSON lines in a local file (a test sink)")
