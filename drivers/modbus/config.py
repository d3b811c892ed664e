"""Validated configuration of one Modbus device and its tags (pydantic v2, unknown keys rejected).

Addresses are 0-based protocol addresses, as sent on the wire: a manual's "holding register
40001" is table "holding_register", address 0. A Modicon-style number (40001, 300001, ...) on
the table it names is refused with the zero-based address to use, unless the device says
`modicon_addresses = true` (convert every tag's address) or `false` (take them literally).
"""

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.modbus.scaling import to_raw
from drivers.modbus.tables import (
    BIT_TABLES,
    COUNTER_LIMIT,
    MODICON_BASE,
    WRITABLE_TABLES,
    DType,
    Order,
    Table,
    modicon_to_address,
    width,
)


class ModbusTag(BaseModel):
    """One value on the device: where it lives, how it is encoded, and how to scale it.

    dtype: bit tables (coil, discrete_input) take "bool"; register tables take the numeric types,
    "string" (`length` registers, two characters each, for display only) or "bool" with `bit`
    (one bit 0..15 of a register, 0 = least significant).
    order: byte/word order of the registers (see drivers.modbus.codec); for 16-bit types
    ABCD/CDAB mean as-is and DCBA/BADC mean bytes swapped; for strings ABCD = first character
    in the high byte, BADC = in the low byte.
    scale/offset: engineering value = raw * scale + offset (numeric tags only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    table: Table
    address: int = Field(ge=0, le=65535)
    dtype: DType
    order: Order = "ABCD"
    length: int | None = Field(default=None, ge=1, le=125)  # registers, strings only
    bit: int | None = Field(default=None, ge=0, le=15)  # bit inside a register, 0 = LSB
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False

    @property
    def width(self) -> int:
        """Registers (or bits) the tag occupies."""
        if self.dtype == "string":
            return self.length or 0
        if self.bit is not None:
            return 1
        return width(self.dtype)

    @property
    def is_bit(self) -> bool:
        """On a bit table (coil, discrete input)."""
        return self.table in BIT_TABLES

    @field_validator("scale")
    @classmethod
    def _scale_usable(cls, v: float) -> float:
        if not math.isfinite(v) or v == 0:
            raise ValueError(f"scale must be a finite, non-zero number (got {v}); use 1 for no scaling")
        return v

    @field_validator("offset")
    @classmethod
    def _offset_finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"offset must be finite (got {v}); use 0 for no offset")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ModbusTag":
        where = f"tag {self.name!r}"
        if self.is_bit:
            if self.dtype != "bool":
                raise ValueError(f"{where}: dtype {self.dtype!r} is not valid on table {self.table!r}; "
                                 "bit tables (coil, discrete_input) need dtype 'bool'")
            if self.bit is not None:
                raise ValueError(f"{where}: bit = {self.bit} only applies to register tables; remove it")
        elif self.dtype == "bool" and self.bit is None:
            raise ValueError(f"{where}: dtype 'bool' on table {self.table!r} needs bit = 0..15 (the bit "
                             "inside the register); or use a numeric dtype, or a coil/discrete_input")
        elif self.bit is not None and self.dtype != "bool":
            raise ValueError(f"{where}: bit = {self.bit} needs dtype = 'bool' (got {self.dtype!r})")
        if self.dtype == "string":
            if self.length is None:
                raise ValueError(f"{where}: dtype 'string' needs length = <registers> (2 characters each)")
            if self.order not in ("ABCD", "BADC"):
                raise ValueError(f"{where}: string order is 'ABCD' (first character in the high byte) "
                                 f"or 'BADC' (in the low byte), not {self.order!r}")
            if self.writable:
                raise ValueError(f"{where}: string tags are read for display only; set writable = false")
        elif self.length is not None:
            raise ValueError(f"{where}: length only applies to dtype 'string'; remove it")
        if self.dtype in ("bool", "string") and (self.scale != 1 or self.offset != 0):
            raise ValueError(f"{where}: scale/offset do not apply to {self.dtype} tags; remove them")
        if self.address + self.width > 65536:
            raise ValueError(f"{where}: address {self.address} + width {self.width} runs past 65535; "
                             "lower the address")
        if self.writable and self.table not in WRITABLE_TABLES:
            raise ValueError(f"{where}: writable = true is only possible on coil or holding_register "
                             f"tables, not {self.table!r}; set writable = false")
        return self


class ModbusDeviceConfig(BaseModel):
    """One Modbus device (unit id) polled by one driver: over TCP, RTU over TCP, or a serial line.

Besides its keys it answers what the controller asks of every driver config (drivers.registry
.DriverConfig): the acquisition interval, and whether a value or a counter fits a tag.
"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    # tcp: Modbus TCP (MBAP); rtu_over_tcp: RTU frames through a serial-to-Ethernet gateway in
    # transparent mode; serial: Modbus RTU on a local serial port.
    transport: Literal["tcp", "rtu_over_tcp", "serial"] = "tcp"
    host: str | None = Field(default=None, min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    serial_port: str | None = Field(default=None, min_length=1)  # e.g. /dev/ttyUSB0
    baudrate: int = Field(default=19200, gt=0)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    device_id: int = Field(default=1, ge=0, le=255)  # the unit id (slave address on a serial line)
    timeout_s: float = Field(default=1.0, ge=0.01, le=60, allow_inf_nan=False)  # per request (and connect)
    poll_interval_s: float = Field(default=1.0, ge=0.001, le=3600, allow_inf_nan=False)
    max_registers_per_read: int = Field(default=125, ge=1, le=125)
    max_bits_per_read: int = Field(default=2000, ge=1, le=2000)
    max_gap: int = Field(default=0, ge=0, le=2000)  # unused addresses a block read may span
    # multiple: FC16 for register writes; single: FC6 (devices that refuse FC16; 1-register tags only)
    write_function: Literal["multiple", "single"] = "multiple"
    modicon_addresses: bool | None = None  # see the module docstring
    readback: bool = True
    # A half-open TCP connection never reports a close; after this many unanswered requests in
    # a row the driver declares the connection lost so the supervisor opens a fresh session.
    max_consecutive_timeouts: int = Field(default=3, ge=1, le=1000)
    tags: list[ModbusTag] = Field(min_length=1)

    def acquisition_interval_s(self) -> float:
        return self.poll_interval_s

    def write_problem(self, tag: str, value: bool | int | float) -> str | None:
        """Why `value` cannot be written to `tag` (the driver would refuse it), or None."""
        t = self._tag(tag)
        if t is None:
            return None
        if t.dtype == "string":
            return f"tag {tag!r} is a string, read for display only"
        if t.dtype == "bool":
            if value in (0, 1):
                return None
            kind = "coil" if t.is_bit else "bit"
            return f"tag {tag!r} is a {kind}; expected true/false (or 1/0), got {value!r}"
        try:
            to_raw(value, t.dtype, t.scale, t.offset)
        except ValueError as exc:
            return f"tag {tag!r} ({t.dtype}): {exc}"
        return None

    def counter_problem(self, tag: str, wrap: int) -> str | None:
        """Why `tag` cannot hold a heartbeat counter running 0 .. wrap-1, or None."""
        t = self._tag(tag)
        if t is None:
            return None
        if t.dtype in ("bool", "string"):
            what = "a coil" if t.is_bit else f"a {t.dtype} tag"
            return (f"watchdog tag {tag!r} is {what}; the heartbeat is a counter: use a holding_register "
                    "(e.g. dtype = 'uint16')")
        if wrap > COUNTER_LIMIT[t.dtype]:
            return f"{wrap} does not fit {t.dtype} tag {tag!r}; expected <= {COUNTER_LIMIT[t.dtype]}"
        return None

    def value_kind(self, tag: str) -> Literal["number", "bit", "text"] | None:
        """bit: a coil or discrete input; text: a string tag; number: anything else (register bits too)."""
        t = self._tag(tag)
        if t is None:
            return None
        return "bit" if t.is_bit else "text" if t.dtype == "string" else "number"

    def _tag(self, name: str) -> ModbusTag | None:
        return next((t for t in self.tags if t.name == name), None)

    @property
    def endpoint(self) -> str:
        """Where the device is, for messages and status views."""
        if self.transport == "serial":
            return f"{self.serial_port} ({self.baudrate} {self.bytesize}{self.parity}{self.stopbits})"
        return f"{self.host}:{self.port}" + (" (RTU over TCP)" if self.transport == "rtu_over_tcp" else "")

    @model_validator(mode="before")
    @classmethod
    def _modicon(cls, data: object) -> object:
        """Convert (modicon_addresses = true) or refuse (unset) Modicon-style addresses."""
        if not isinstance(data, dict) or data.get("modicon_addresses") is False \
                or not isinstance(data.get("tags"), list):
            return data  # not a device table or no tag list: the field validation reports it
        convert = data.get("modicon_addresses") is True
        tags = []
        for t in data.get("tags") or []:
            raw = t.model_dump() if isinstance(t, ModbusTag) else t
            table, number = (raw.get("table"), raw.get("address")) if isinstance(raw, dict) else (None, None)
            if not isinstance(table, str) or table not in MODICON_BASE or not isinstance(number, int) \
                    or isinstance(number, bool):
                tags.append(t)
                continue
            zero = modicon_to_address(table, number)
            name = raw.get("name")
            if convert:
                if zero is None:
                    five, six = MODICON_BASE[table]
                    raise ValueError(f"tag {name!r}: address {number} is not a Modicon reference for "
                                     f"{table} (expected {five}.. or {six}..), and modicon_addresses = "
                                     "true converts every address of this device")
                tags.append({**raw, "address": zero})
            elif zero is not None and table != "coil":
                raise ValueError(f"tag {name!r}: address {number} looks like a Modicon reference for "
                                 f"{table}; addresses are zero-based: use address = {zero}, or set "
                                 "modicon_addresses = true on the device to convert such numbers (false "
                                 f"if {number} really is the protocol address)")
            else:
                tags.append(t)
        return {**data, "tags": tags} if data.get("tags") else data

    @model_validator(mode="after")
    def _consistent(self) -> "ModbusDeviceConfig":
        where = f"device {self.name!r}"
        if self.transport == "serial":
            if self.serial_port is None or self.host is not None:
                raise ValueError(f"{where}: transport = 'serial' needs serial_port = '/dev/tty...' "
                                 "and no host")
        elif self.host is None or self.serial_port is not None:
            raise ValueError(f"{where}: transport = {self.transport!r} needs host = '<address>' and no "
                             "serial_port (use transport = 'serial' for a local serial line)")
        if self.transport != "tcp" and not 1 <= self.device_id <= 247:
            raise ValueError(f"{where}: device_id {self.device_id} is not a serial slave address; RTU "
                             "devices answer on 1..247 (0 is broadcast, nobody replies)")
        seen: set[str] = set()
        for t in self.tags:
            if t.name in seen:
                raise ValueError(f"{where}: tag name {t.name!r} is used twice; tag names must be unique")
            seen.add(t.name)
            if not t.is_bit and t.width > self.max_registers_per_read:
                raise ValueError(f"{where}: tag {t.name!r} ({t.dtype}) needs {t.width} "
                                 f"registers but max_registers_per_read is {self.max_registers_per_read};"
                                 f" raise max_registers_per_read to at least {t.width}")
            if (self.write_function == "single" and t.writable and not t.is_bit and t.width > 1):
                raise ValueError(f"{where}: tag {t.name!r} ({t.dtype}) spans {t.width} registers but "
                                 "write_function = 'single' (FC6) writes one register per request, "
                                 "which would leave it half-written between requests; use a 16-bit "
                                 "tag or write_function = 'multiple'")
        return self
