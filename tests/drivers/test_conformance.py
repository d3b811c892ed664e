"""One driver conformance suite, parametrised over the registry: every plugin, every test server.

Like River's check_estimator: the contract every Driver keeps (connect, read every type, batches
from subscribe, quality of a bad value, the write allow-list with readback, close, a dead server
is ConnectionLost, a permanent refusal stops the supervisor with FAILED) is written once. Each
plugin brings an adapter (tests/drivers/adapters/, the toy's in tests/drivers/toy/) with its own
real servers, including an independent implementation (node-opcua, pyModbusTCP). A registered
plugin without an adapter fails the suite. Drivers are built through `registry.plugin(name)`.
Protocol-specific behaviour stays in test_opcua_*.py / test_modbus_*.py.
"""

import asyncio

import numpy as np
import pytest
import pytest_asyncio

from drivers import registry
from drivers.base import ConnectionState, Quality
from drivers.errors import ConnectionLost, WriteRefused
from drivers.supervisor import Backoff, DriverSupervisor, SessionRateLimiter
from hil_tests.rig.net import free_port, wait_for
from tests.drivers.adapters.modbus import ModbusAdapter
from tests.drivers.adapters.opcua import OpcUaAdapter
from tests.drivers.opcua_server import Collector
from tests.drivers.toy import PLUGIN as TOY
from tests.drivers.toy.adapter import ToyAdapter

pytestmark = pytest.mark.asyncio(loop_scope="module")
ADAPTERS = {a.plugin: a for a in (OpcUaAdapter(), ModbusAdapter(), ToyAdapter())}
CASES = [(name, kind) for name, a in ADAPTERS.items() for kind in a.servers]


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    """The toy driver takes part through the same registry as the built-ins."""
    registry.register(TOY)
    yield
    registry.unregister(TOY.name)


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=CASES, ids=[f"{p}-{k}" for p, k in CASES])
async def case(request):
    """(adapter, running server) for one plugin and one server implementation; starting fails, never skips."""
    name, kind = request.param
    adapter = ADAPTERS[name]
    server = await adapter.start(kind)
    yield adapter, server
    await server.stop()


def make(adapter, table: dict):
    plugin = registry.plugin(adapter.plugin)
    return plugin.create(plugin.config.model_validate(table, strict=True))


async def connected(adapter, server):
    driver = make(adapter, adapter.config(server))
    await driver.connect()
    return driver


def good_values(driver, batch) -> dict[str, float]:
    return {driver.tag_names[i]: float(v) for i, v, q in zip(batch.index, batch.values, batch.quality,
                                                              strict=True) if q == Quality.GOOD}


async def test_every_registered_driver_has_an_adapter():
    assert set(registry.plugins()) <= set(ADAPTERS), "add an adapter to tests/drivers/adapters/"


async def test_connect_and_read_every_type(case):
    adapter, server = case
    driver = await connected(adapter, server)
    try:
        batch = await driver.read()
        assert sorted(batch.index.tolist()) == list(range(len(driver.tag_names)))
        got = good_values(driver, batch)
        for tag, value in adapter.expected.items():
            assert got.get(tag) == pytest.approx(value, rel=1e-6), tag
        assert driver.stats.last_alive > -np.inf
    finally:
        await driver.close()


async def test_subscribe_delivers_batches(case):
    adapter, server = case
    driver = await connected(adapter, server)
    got = Collector()
    task = asyncio.create_task(driver.subscribe(got))
    try:
        def seen() -> bool:
            values = {}
            for b in got.batches:
                values |= good_values(driver, b)
            return all(values.get(t) == pytest.approx(v, rel=1e-6) for t, v in adapter.expected.items())
        await wait_for(seen, timeout=10, what="every typed tag GOOD in the delivered batches")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.close()


async def test_a_bad_value_is_bad_quality_with_its_reason(case):
    adapter, server = case
    driver = await connected(adapter, server)
    try:
        batch = await driver.read()
        bad = driver.tag_names.index(adapter.bad_tag)
        k = int(np.flatnonzero(batch.index == bad)[0])
        assert batch.quality[k] == Quality.BAD and np.isnan(batch.values[k])
        assert driver.stats.tag_errors.get(adapter.bad_tag)
        assert set(good_values(driver, batch)) >= set(adapter.expected)  # the rest flows
    finally:
        await driver.close()


async def test_writes_go_only_to_writable_tags_and_are_read_back(case):
    adapter, server = case
    tag, value = adapter.write
    driver = await connected(adapter, server)
    before = await adapter.read_independently(server, tag)
    try:
        await driver.write(tag, value)
        assert await adapter.read_independently(server, tag) == pytest.approx(value)
        assert good_values(driver, await driver.read([tag])) == {tag: pytest.approx(value)}
        for refused in (adapter.read_only_tag, "no_such_tag"):
            with pytest.raises(WriteRefused):
                await driver.write(refused, 1)
    finally:
        await driver.write(tag, before)  # the server is shared by this module's checks
        await driver.close()


async def test_close_is_idempotent_and_ends_the_session(case):
    adapter, server = case
    driver = await connected(adapter, server)
    await driver.close()
    await driver.close()
    with pytest.raises(ConnectionLost):
        await driver.read()


@pytest.mark.parametrize("name", list(ADAPTERS))
async def test_a_dead_server_is_connection_lost(name):
    adapter = ADAPTERS[name]
    driver = make(adapter, adapter.dead_config(free_port()))
    with pytest.raises(ConnectionLost) as info:
        await driver.connect()
    assert not info.value.permanent
    await driver.close()


@pytest.mark.parametrize("name", [n for n in ADAPTERS if n != "modbus"])  # Modbus has no identity to refuse
async def test_a_permanent_refusal_stops_the_supervisor_with_failed(name, tmp_path):
    adapter = ADAPTERS[name]
    cases = await adapter.permanent_cases(tmp_path)
    assert cases
    try:
        for c in cases:
            driver = make(adapter, c.config)
            states: list[ConnectionState] = []
            sup = DriverSupervisor(driver, lambda b: None, backoff=Backoff(initial=0.001, cap=0.002),
                                   limiter=SessionRateLimiter(per_minute=10_000),
                                   on_state=lambda s, _d, states=states: states.append(s))
            await asyncio.wait_for(sup.start(), 20)  # run() returns instead of backing off
            assert isinstance(sup.failure, c.error) and sup.failure.permanent
            assert states.count(ConnectionState.CONNECTING) == 1 and states[-1] is ConnectionState.FAILED
            await sup.stop()
    finally:
        for c in cases:
            if c.server is not None:
                await c.server.stop()
