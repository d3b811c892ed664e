"""An on_state target for supervisor tests: where in a collector's batches each loss was reported."""

from drivers.base import ConnectionState


class Losses:
    """Records len(collector.batches) at every BACKOFF the supervisor reports (the loss signal)."""

    def __init__(self, collector) -> None:
        self.collector = collector
        self.at: list[int] = []
        self.details: list[str] = []

    def __call__(self, state: ConnectionState, detail: str) -> None:
        if state is ConnectionState.BACKOFF:
            self.at.append(len(self.collector.batches))
            self.details.append(detail)
