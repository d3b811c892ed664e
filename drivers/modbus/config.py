"""Validated configuration of one Modbus TCP device and its tags (pydantic v2, unknown keys rejected).

Addresses are 0-based protocol addresses, as sent on the wire: a manual's "holding register
40001" is table "holding_register", address 0.
"""

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.modbus import codec

Table = Literal["coil", "discrete_input", "holding_register", "input_register"]
BIT_TABLES = frozenset({"coil", "discrete_input"})
WRITABLE_TABLES = frozenset({"coil", "holding_register"})


class ModbusTag(BaseModel):
    """One value on the device: where it lives, how it is encoded, and how to scale it.

    dtype: bit tables (coil, discrete_input) take "bool"; register tables take the numeric types.
    order: byte/word order of the registers (see drivers.modbus.codec); for 16-bit types
    ABCD/CDAB mean as-is and DCBA/BADC mean bytes swapped.
    scale/offset: engineering value = raw * scale + offset (numeric tags only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    table: Table
    address: int = Field(ge=0, le=65535)
    dtype: codec.DType
    order: codec.Order = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False

    @property
    def width(self) -> int:
        """Registers (or bits) the tag occupies."""
        return codec.width(self.dtype)

    @property
    def is_bit(self) -> bool:
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
        if self.is_bit and self.dtype != "bool":
            raise ValueError(f"{where}: dtype {self.dtype!r} is not valid on table {self.table!r}; "
                             "bit tables (coil, discrete_input) need dtype 'bool'")
        if not self.is_bit and self.dtype == "bool":
            raise ValueError(f"{where}: dtype 'bool' is not valid on table {self.table!r}; "
                             "use a numeric dtype (e.g. 'uint16') or move the tag to a coil/discrete_input")
        if self.is_bit and (self.scale != 1 or self.offset != 0):
            raise ValueError(f"{where}: scale/offset do not apply to bool tags; remove them")
        if self.address + self.width > 65536:
            raise ValueError(f"{where}: address {self.address} + width {self.width} runs past 65535; "
                             "lower the address")
        if self.writable and self.table not in WRITABLE_TABLES:
            raise ValueError(f"{where}: writable = true is only possible on coil or holding_register "
                             f"tables, not {self.table!r}; set writable = false")
        return self


class ModbusDeviceConfig(BaseModel):
    """One Modbus TCP device (unit id) polled by one driver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    device_id: int = Field(default=1, ge=0, le=255)  # the MBAP unit id
    timeout_s: float = Field(default=1.0, gt=0, le=60)  # per request (and per connect)
    poll_interval_s: float = Field(default=1.0, gt=0)
    max_registers_per_read: int = Field(default=125, ge=1, le=125)
    max_bits_per_read: int = Field(default=2000, ge=1, le=2000)
    max_gap: int = Field(default=0, ge=0, le=2000)  # unused addresses a block read may span
    readback: bool = True
    # A half-open TCP connection never reports a close; after this many unanswered requests in
    # a row the driver declares the connection lost so the supervisor opens a fresh session.
    max_consecutive_timeouts: int = Field(default=3, ge=1)
    tags: list[ModbusTag] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "ModbusDeviceConfig":
        seen: set[str] = set()
        for t in self.tags:
            if t.name in seen:
                raise ValueError(f"device {self.name!r}: tag name {t.name!r} is used twice; "
                                 "tag names must be unique")
            seen.add(t.name)
            if not t.is_bit and t.width > self.max_registers_per_read:
                raise ValueError(f"device {self.name!r}: tag {t.name!r} ({t.dtype}) needs {t.width} "
                                 f"registers but max_registers_per_read is {self.max_registers_per_read};"
                                 f" raise max_registers_per_read to at least {t.width}")
        return self
