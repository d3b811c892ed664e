"""What a misbehaving Modbus device leaves in the service log and the event loop, over real sockets.

The driver reports each failure itself (once per block); pymodbus' per-request ERROR lines stay out
of the log unless --log-levels names pymodbus, and a stop in the middle of a request leaves no
orphaned pymodbus task behind (it would end in 'Task exception was never retrieved').
"""

import asyncio
import io
import logging

import pytest
from conftest import wait_for
from modbus_server import RawServer, register_reply, request_address

from controller.logs import setup_logging
from drivers.modbus import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver

TAGS = [{"name": "a", "table": "holding_register", "address": 0, "dtype": "uint16"},
        {"name": "b", "table": "holding_register", "address": 100, "dtype": "uint16"}]


def cfg(port: int) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(name="quiet", host="127.0.0.1", port=port, timeout_s=0.1, tags=TAGS)


@pytest.fixture
def service_log():
    """The service's own logging setup writing to a string; the previous setup restored after."""
    root, pymodbus = logging.getLogger(), logging.getLogger("pymodbus")
    saved = (root.level, pymodbus.level, logging.getLogger("asyncua").level)
    out = io.StringIO()

    def setup(module_levels=None) -> io.StringIO:
        setup_logging("INFO", module_levels=module_levels, stream=out, rate_limit_s=0)
        return out

    yield setup
    for h in [h for h in root.handlers if getattr(h, "_linesentry_handler", False)]:
        root.removeHandler(h)
    root.setLevel(saved[0])
    pymodbus.setLevel(saved[1])
    logging.getLogger("asyncua").setLevel(saved[2])


@pytest.mark.parametrize(("module_levels", "pymodbus_shown"), [(None, False), ({"pymodbus": "ERROR"}, True)])
async def test_pymodbus_per_request_errors_stay_out_of_the_service_log(port, service_log, module_levels,
                                                                        pymodbus_shown):
    out = service_log(module_levels)
    server = await RawServer(port, lambda r: None if request_address(r) == 100 else register_reply(r)).start()
    d = ModbusDriver(cfg(port))
    try:
        await d.connect()
        for _ in range(2):
            await d.read()
    finally:
        await d.close()
        await server.stop()
    text = out.getvalue()
    assert "quiet: no answer within 0.1 s; BAD: b" in text  # the driver's own line, once
    assert text.count("no answer within") == 1
    assert ("No response received" in text) is pymodbus_shown


REPLY_DELAY_S = 1.0  # the device answers after the driver's 0.5 s timeout: a request is in flight


async def test_a_stop_in_the_middle_of_a_request_leaves_no_request_task(port):
    async def slow(request: bytes) -> bytes:
        await asyncio.sleep(REPLY_DELAY_S)
        return register_reply(request)

    server = await RawServer(port, slow).start()
    d = ModbusDriver(cfg(port).model_copy(update={"timeout_s": 0.5}))
    try:
        await d.connect()
        task = asyncio.create_task(d.subscribe(lambda b: None))
        await wait_for(lambda: server.requests >= 1, timeout=5, what="a request on the wire")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pymodbus_tasks = [t for t in asyncio.all_tasks() if not t.done()
                          and "pymodbus" in (t.get_coro().cr_code.co_filename or "")]
        assert pymodbus_tasks == []
    finally:
        await d.close()
        await server.stop()
