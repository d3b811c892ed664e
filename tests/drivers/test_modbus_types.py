"""Config for the types a real line has (strings, bits in registers, FC6 writes, Modicon numbers,
serial transports), and FC6 against a device that refuses FC16, over a real socket."""

import pytest
from modbus_server import RequestLog, SimServer, bits_at, device, registers_at
from pydantic import ValidationError
from pymodbus.constants import ExcCodes

from drivers.errors import WriteFailed
from drivers.modbus import ModbusDeviceConfig, codec
from drivers.modbus.driver import ModbusDriver


def dev(tags: list[dict], **kw) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(**({"name": "d", "host": "127.0.0.1", "tags": tags} | kw))


def tag(table: str, address: int, dtype: str = "uint16", **kw) -> dict:
    return {"name": "t", "table": table, "address": address, "dtype": dtype, **kw}


@pytest.mark.parametrize(("table", "number", "zero"), [("holding_register", 40001, 0),
                                                       ("holding_register", 40101, 100),
                                                       ("holding_register", 400001, 0),
                                                       ("input_register", 30010, 9),
                                                       ("discrete_input", 10001, 0)])
def test_a_modicon_number_is_refused_with_the_zero_based_address(table, number, zero):
    dtype = "bool" if table == "discrete_input" else "uint16"
    with pytest.raises(ValidationError) as info:
        dev([tag(table, number, dtype)])
    msg = str(info.value)
    assert f"address {number} looks like a Modicon reference" in msg
    assert f"use address = {zero}" in msg and "modicon_addresses = true" in msg


@pytest.mark.parametrize(("table", "number", "zero"), [("holding_register", 40001, 0),
                                                       ("holding_register", 465536, 65535),
                                                       ("input_register", 30002, 1),
                                                       ("discrete_input", 100005, 4),
                                                       ("coil", 1, 0), ("coil", 17, 16)])
def test_modicon_numbers_are_converted_only_when_asked(table, number, zero):
    dtype = "bool" if table in ("coil", "discrete_input") else "uint16"
    assert dev([tag(table, number, dtype)], modicon_addresses=True).tags[0].address == zero


def test_modicon_conversion_refuses_a_plain_address_and_false_takes_numbers_literally():
    with pytest.raises(ValidationError, match="address 5 is not a Modicon reference for holding_register"):
        dev([tag("holding_register", 5)], modicon_addresses=True)
    assert dev([tag("holding_register", 40001)], modicon_addresses=False).tags[0].address == 40001
    assert dev([tag("holding_register", 30001)]).tags[0].address == 30001  # 3xxxx is not a holding ref
    assert dev([tag("coil", 40001, "bool")]).tags[0].address == 40001  # coils are never guessed


@pytest.mark.parametrize(("extra", "match"), [
    ({"dtype": "string"}, "needs length"),
    ({"dtype": "string", "length": 4, "order": "CDAB"}, "string order is 'ABCD'"),
    ({"dtype": "string", "length": 4, "writable": True}, "display only"),
    ({"dtype": "uint16", "length": 4}, "length only applies"),
    ({"dtype": "bool"}, "needs bit = 0..15"),
    ({"dtype": "uint16", "bit": 3}, "needs dtype = 'bool'"),
    ({"dtype": "bool", "bit": 16}, "less than or equal to 15"),
    ({"dtype": "bool", "bit": 2, "scale": 2.0}, "scale/offset do not apply"),
])
def test_string_and_bit_tags_are_validated(extra, match):
    with pytest.raises(ValidationError, match=match):
        dev([tag("holding_register", 0) | extra])


def test_widths_of_strings_and_bits():
    t = dev([tag("holding_register", 10, "string", length=6)]).tags[0]
    assert t.width == 6
    assert dev([tag("input_register", 0, "bool", bit=15)]).tags[0].width == 1
    with pytest.raises(ValidationError, match="bit = 1 only applies to register tables"):
        dev([tag("coil", 0, "bool", bit=1)])


def test_strings_decode_with_either_byte_order_and_drop_padding():
    assert codec.decode_string(codec.encode_string("LINE 4", 5)) == "LINE 4"
    assert codec.decode_string([0x4142, 0x4320, 0x2000]) == "ABC"
    assert codec.decode_string([0x4241, 0x0043], "BADC") == "ABC"
    assert codec.decode_string([0x41FF]) == "A\ufffd"


def test_single_register_writes_refuse_multi_register_writable_tags():
    with pytest.raises(ValidationError, match="write_function = 'single' .* half-written"):
        dev([tag("holding_register", 0, "float32", writable=True)], write_function="single")
    dev([tag("holding_register", 0, "float32")], write_function="single")  # reading is fine


@pytest.mark.parametrize(("kw", "match"), [
    ({"transport": "serial"}, "needs serial_port"),
    ({"transport": "tcp", "host": None, "serial_port": "/dev/ttyS0"}, "needs host"),
    ({"transport": "serial", "host": None, "serial_port": "/dev/ttyS0", "device_id": 0}, "broadcast"),
    ({"transport": "rtu_over_tcp", "device_id": 248}, "1..247"),
])
def test_transport_settings_are_validated(kw, match):
    with pytest.raises(ValidationError, match=match):
        dev([tag("holding_register", 0)], **kw)


async def test_fc6_for_a_device_that_refuses_fc16(port):
    def refuse_fc16(fc: int, _addr: int, _count: int) -> bool:
        return fc == 16

    class NoFc16(RequestLog):
        async def action(self, fc, start, address, count, regs, set_values):
            if fc != 6 or set_values is not None:  # pymodbus asks twice for a write: check, then set
                self.requests.append((fc, address, count))
            return ExcCodes.ILLEGAL_FUNCTION if refuse_fc16(fc, address, count) else None

    log = NoFc16()
    server = await SimServer(lambda: device([bits_at(0, [False] * 16)], [bits_at(0, [False] * 16)],
                                            [registers_at(0, [0] * 8)], [registers_at(0, [0])], log),
                             port).start()
    tags = [tag("holding_register", 3, "int16", writable=True),
            {"name": "b5", "table": "holding_register", "address": 4, "dtype": "bool", "bit": 5,
             "writable": True}]
    plain = ModbusDriver(dev(tags, port=port))
    single = ModbusDriver(dev(tags, port=port, write_function="single"))
    try:
        await plain.connect()
        with pytest.raises(WriteFailed, match=r"exception 1 \(illegal function\); if the device does not "
                                              r"support FC16 .* write_function = 'single'"):
            await plain.write("t", -5)
        await single.connect()
        log.requests.clear()
        await single.write("t", -5)
        await single.write("b5", 1)
        # write, readback; then read-modify-write: read, write, readback
        assert [fc for fc, _, _ in log.requests] == [6, 3, 3, 6, 3]
        assert (await single.read()).values.tolist() == [-5.0, 1.0]
    finally:
        await plain.close()
        await single.close()
        await server.stop()
