"""SyncWorker end to end: outbox -> fault proxy -> VictoriaMetrics, for every failure path."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from controller.outbox import Outbox
from controller.sync import SyncConfig, SyncConfigError, SyncWorker
from hil_tests.rig.net import wait_for
from tests.cloud.helpers import assert_exactly_once, base_end_ns, expected, window_records

WINDOWS, TAGS = 12, 5


def config(url: str, token_env: str, **kw) -> SyncConfig:
    base = dict(url=url, org="o", bucket="b", token_env=token_env, batch_size=10, timeout_s=0.5,
                backoff_initial_s=0.01, backoff_cap_s=0.05)
    return SyncConfig(**(base | kw))


@pytest.fixture
def filled(tmp_path):
    ob = Outbox(tmp_path)
    base = base_end_ns(WINDOWS)
    for i in range(WINDOWS):
        assert ob.append(window_records(base, i, TAGS)).ok
    yield ob, base
    ob.close()


async def fast_pause(delay: float) -> None:
    """Scheduled waits are recorded by the worker; the test does not spend them."""
    await asyncio.sleep(0.005)


async def drain(worker: SyncWorker, ob: Outbox, timeout: float = 10.0) -> None:
    worker.wake()
    await wait_for(lambda: ob.backlog()[0] == 0, timeout, what="the outbox to drain")


async def test_pass_through_sends_everything_once(filled, proxy, victoria, token_env):
    ob, base = filled
    async with SyncWorker(config(proxy.url, token_env), ob) as w:
        await drain(w, ob)
    assert w.stats.sent_points == WINDOWS * TAGS and w.stats.failed_sends == 0
    assert w.stats.sent_batches == WINDOWS * TAGS // 10
    assert_exactly_once(victoria, expected(base, range(WINDOWS), TAGS))


@pytest.mark.parametrize("mode, kw", [
    ("refuse", {}),
    ("reset", {}),
    ("reset_after", {}),  # the server stored the batch but the answer is lost: resend must overwrite
    ("status", {"status": 503}),  # no Retry-After: exponential backoff
    ("status", {"status": 500}),
    ("slow", {"delay": 2.0}),  # longer than timeout_s
])
async def test_transient_faults_keep_data_and_deliver_exactly_once_after(filled, proxy, victoria, token_env,
                                                                        mode, kw):
    ob, base = filled
    await proxy.set(mode, **kw)
    async with SyncWorker(config(proxy.url, token_env), ob, pause=fast_pause) as w:
        await wait_for(lambda: w.stats.failed_sends >= 3, 10, what=f"three failed sends in mode {mode}")
        assert w.stats.sent_points == 0
        assert ob.backlog()[1] == WINDOWS * TAGS  # nothing deleted without a 2xx
        waits = list(w.schedule)
        assert all(x.reason == "backoff" for x in waits)
        assert waits[0].delay_s <= waits[-1].delay_s * 2 + 1e-9  # grows (jitter within [d/2, d])
        assert all(0.005 - 1e-9 <= x.delay_s <= 0.05 + 1e-9 for x in waits)
        await proxy.set("pass")
        await drain(w, ob)
    assert_exactly_once(victoria, expected(base, range(WINDOWS), TAGS))


@pytest.mark.parametrize("status, retry_after, seconds", [(429, "7", 7.0), (503, "2.5", 2.5)])
async def test_retry_after_is_honoured(filled, proxy, victoria, token_env, status, retry_after, seconds):
    ob, base = filled
    await proxy.set("status", status=status, retry_after=retry_after, count=2)
    async with SyncWorker(config(proxy.url, token_env, backoff_cap_s=1.0), ob, pause=fast_pause) as w:
        await drain(w, ob)
    waits = [x for x in w.schedule if x.status == status]
    assert len(waits) == 2
    assert all(x.reason == "retry_after" and x.delay_s == seconds == x.retry_after_s for x in waits)
    assert_exactly_once(victoria, expected(base, range(WINDOWS), TAGS))


async def test_malformed_batch_goes_to_dead_letter_and_the_rest_arrives(filled, proxy, victoria, token_env):
    ob, base = filled
    await proxy.set("status", status=400, message="unable to parse 'bad line': missing fields", count=1)
    async with SyncWorker(config(proxy.url, token_env), ob, pause=fast_pause) as w:
        await drain(w, ob)
    (dl,) = ob.dead_letters()
    assert dl.status == 400 and "unable to parse 'bad line'" in dl.message and dl.n_points == 10
    assert w.stats.dead_lettered_points == 10 and w.stats.retries == 0  # not retried
    # the first batch (windows 0 and 1) is in dead-letter, everything else arrived once
    assert_exactly_once(victoria, expected(base, range(2, WINDOWS), TAGS))


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_raises_alarm_once_and_keeps_data(filled, proxy, victoria, token_env, status):
    ob, base = filled
    alarms: list[tuple[str, str]] = []
    await proxy.set("status", status=status, message="unauthorized access")
    async with SyncWorker(config(proxy.url, token_env), ob, on_alarm=lambda k, m: alarms.append((k, m)),
                          pause=fast_pause) as w:
        await wait_for(lambda: w.stats.auth_failures >= 3, 10, what="three refused sends")
        assert len(alarms) == 1 and alarms[0][0] == "sync_auth"
        assert "unauthorized access" in alarms[0][1] and token_env in alarms[0][1]
        assert ob.backlog()[1] == WINDOWS * TAGS and not ob.dead_letters()
        await proxy.set("pass")  # the token was fixed
        await drain(w, ob)
    assert len(alarms) == 1
    assert_exactly_once(victoria, expected(base, range(WINDOWS), TAGS))


async def test_a_failing_alarm_callback_does_not_stop_the_worker(filled, proxy, victoria, token_env):
    ob, base = filled

    def broken(kind: str, message: str) -> None:
        raise RuntimeError("callback bug")

    await proxy.set("status", status=401, count=2)
    async with SyncWorker(config(proxy.url, token_env), ob, on_alarm=broken, pause=fast_pause) as w:
        await drain(w, ob)
    assert_exactly_once(victoria, expected(base, range(WINDOWS), TAGS))


async def test_new_data_is_picked_up_and_metrics_report_backlog(tmp_path, proxy, victoria, token_env):
    base = base_end_ns(4)
    with Outbox(tmp_path) as ob:
        async with SyncWorker(config(proxy.url, token_env), ob) as w:
            for i in range(4):
                await ob.append_async(window_records(base, i, TAGS))
                w.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 10, what="drain")
            m = w.metrics()
        assert m["sent_points"] == 20 and m["backlog_rows"] == 0 and m["dropped_points"] == 0
    assert_exactly_once(victoria, expected(base, range(4), TAGS))


def test_config_rejects_unknown_keys_and_names_the_token_variable(monkeypatch):
    with pytest.raises(ValidationError, match="token"):
        SyncConfig(url="http://x", org="o", bucket="b", token="secret")  # the token never goes in config
    with pytest.raises(ValidationError, match="http:// or https://"):
        SyncConfig(url="influx:8086", org="o", bucket="b")
    with pytest.raises(ValidationError, match="backoff_cap_s"):
        SyncConfig(url="http://x", org="o", bucket="b", backoff_initial_s=10, backoff_cap_s=1)
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    cfg = SyncConfig(url="http://x", org="o", bucket="b", token_env="NO_SUCH_TOKEN_VAR")
    with pytest.raises(SyncConfigError, match="NO_SUCH_TOKEN_VAR .sync.token_env. is not set"):
        SyncWorker(cfg, None)  # type: ignore[arg-type]
    disabled = SyncConfig(url="http://x", org="o", bucket="b", token_env="NO_SUCH_TOKEN_VAR", enabled=False)
    assert SyncWorker(disabled, None).config.enabled is False  # type: ignore[arg-type]
