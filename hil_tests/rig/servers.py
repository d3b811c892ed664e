"""The simulated PLCs: an asyncua server ("conveyor") and a pymodbus server ("press") bound to one plant.

`Rig` owns the plant, the fault injector, both servers, a TCP `Gate` in front of each, and
the loop that steps the plant in real time (fixed ticks) and pushes every tick's values.
Actuator writes from either server act on the same plant and are stamped on arrival in the
`Recorder`. The address map below is the contract the controller's demo config is written
against (docs/hil.md); change it only together with that config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from hil_tests.rig.faults import FaultInjector, FaultSpec
from hil_tests.rig.gate import Gate
from hil_tests.rig.net import free_port
from hil_tests.rig.plant import INDEX, Plant, Snapshot
from hil_tests.rig.recorder import Recorder

log = logging.getLogger(__name__)

# ---- the contract -------------------------------------------------------------------------

NS_URI = "urn:linesentry:plant"
SERVER_URI = "urn:linesentry:sim-conveyor"
OPCUA_PATH = "/linesentry/"
# plant name -> (string node id, variant type, writable)
OPCUA_NODES: dict[str, tuple[str, ua.VariantType, bool]] = {
    "motor_current": ("Conveyor.MotorCurrent", ua.VariantType.Double, False),
    "motor_speed": ("Conveyor.MotorSpeed", ua.VariantType.Double, False),
    "vibration_rms": ("Conveyor.VibrationRMS", ua.VariantType.Double, False),
    "bearing_temp": ("Conveyor.BearingTemp", ua.VariantType.Double, False),
    "line_stop": ("Conveyor.LineStop", ua.VariantType.Boolean, True),
    "reject_gate": ("Conveyor.RejectGate", ua.VariantType.Boolean, True),
    "heartbeat": ("Conveyor.Heartbeat", ua.VariantType.UInt32, True),
}
OPCUA_SENSORS = ("motor_current", "motor_speed", "vibration_rms", "bearing_temp")
# holding registers, 0-based: plant name -> (address, dtype); float32/uint32 big-endian words (ABCD)
MODBUS_HOLDING: dict[str, tuple[int, str]] = {
    "hydraulic_pressure": (0, "float32"),
    "oil_temp": (2, "float32"),
    "cycle_count": (4, "uint32"),
    "pump_flow": (6, "float32"),
    "discharge_pressure": (8, "float32"),
}
MODBUS_HEARTBEAT = 10
MODBUS_COILS: dict[int, str] = {0: "line_stop", 1: "reject_gate"}
DEVICE_ID = 1
READ_FCS = {1, 2, 3, 4}
COIL_FCS = {1, 5, 15}


# ---- OPC UA ---------------------------------------------------------------------------------


@dataclass
class OpcUaSecurityOptions:
    """Serve Basic256Sha256 SignAndEncrypt with a certificate generated into `cert_dir`.

    With no trusted client certificates any client certificate is accepted (a simulator
    convenience; a real PLC must be given a trust list).
    """

    cert_dir: Path
    trusted_client_certs: list[Path] = field(default_factory=list)
    also_plain: bool = False  # offer the None endpoint too

    @property
    def server_cert(self) -> Path:
        return self.cert_dir / "server_cert.der"

    @property
    def server_key(self) -> Path:
        return self.cert_dir / "server_key.pem"

    def ensure_certificate(self) -> None:
        """Generate the server pair once; a restart keeps the same certificate (pinned by clients)."""
        if self.server_cert.exists() and self.server_key.exists():
            return
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        key = cert_gen.generate_private_key()
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            SERVER_URI,
            {},
            [
                x509.UniformResourceIdentifier(SERVER_URI),
                x509.DNSName(socket.gethostname()),
                x509.DNSName("localhost"),
            ],
            extended=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        self.server_cert.write_bytes(cert.public_bytes(Encoding.DER))
        self.server_key.write_bytes(cert_gen.dump_private_key_as_pem(key))
        self.server_key.chmod(0o600)


class ConveyorServer:
    """asyncua server for the conveyor tags; writes to LineStop/RejectGate/Heartbeat reach the plant."""

    def __init__(
        self,
        plant: Plant,
        recorder: Recorder,
        port: int,
        host: str = "127.0.0.1",
        security: OpcUaSecurityOptions | None = None,
    ) -> None:
        self.plant, self.recorder = plant, recorder
        self.host, self.port = host, port
        self.security = security
        self.server: Server | None = None
        self.node_ids: dict[str, ua.NodeId] = {}
        self._by_id: dict[ua.NodeId, str] = {}
        self._internal = False
        self._served: dict[str, Any] = {}

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{OPCUA_PATH}"

    async def start(self) -> ConveyorServer:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.disable_clock()  # its 1 s tick would delay stop() by up to 1 s
        server.set_server_name("linesentry simulated conveyor PLC")
        if self.security is not None:
            await self._secure(server, self.security)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace(NS_URI)
        conveyor = await server.nodes.objects.add_object(
            ua.NodeId("Conveyor", ns), ua.QualifiedName("Conveyor", ns)
        )
        snap = self.plant.snapshot()
        initial = {"line_stop": self.plant.line_stop, "reject_gate": self.plant.reject_gate, "heartbeat": 0}
        self.node_ids, self._by_id, self._served = {}, {}, {}
        for name, (sid, vtype, writable) in OPCUA_NODES.items():
            value = initial[name] if name in initial else snap.value(name)
            node = await conveyor.add_variable(
                ua.NodeId(sid, ns), ua.QualifiedName(sid.split(".")[1], ns), ua.Variant(value, vtype)
            )
            if writable:
                await node.set_writable()
                server.set_attribute_value_setter(node.nodeid, self._on_write)
                self._served[name] = value
            self.node_ids[name] = node.nodeid
            self._by_id[node.nodeid] = name
        await server.start()
        self.server = server
        return self

    @staticmethod
    async def _secure(server: Server, opts: OpcUaSecurityOptions) -> None:
        opts.ensure_certificate()
        await server.set_application_uri(SERVER_URI)
        await server.load_certificate(str(opts.server_cert))
        await server.load_private_key(str(opts.server_key))
        policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        if opts.also_plain:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies)
        if opts.trusted_client_certs:
            trusted = [
                x509.load_der_x509_certificate(p.read_bytes()).public_bytes(Encoding.DER)
                for p in opts.trusted_client_certs
            ]

            async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
                if cert.public_bytes(Encoding.DER) not in trusted:
                    raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

            server.set_certificate_validator(validate)

    def _on_write(self, node: Any, attr: ua.AttributeIds, dv: ua.DataValue) -> None:
        """Every write to a writable node lands here; only client writes (not mirroring) reach the plant."""
        node.attributes[attr].value = dv
        if self._internal:
            self._internal = False
            return
        name = self._by_id.get(node.nodeid)
        value = dv.Value.Value if dv.Value is not None else None
        if name is None or value is None:
            return
        self._served[name] = value
        if name == "heartbeat":
            self.plant.write_heartbeat("conveyor", int(value))
            self.recorder.heartbeat("conveyor", int(value))
        else:
            self.plant.set_actuator(name, bool(value))
            self.recorder.actuator_write("conveyor", name, float(bool(value)))

    async def push(self, snap: Snapshot) -> None:
        """Serve this tick's sensor values (Bad status where a sensor fault says so) and mirror actuators."""
        if self.server is None:
            return
        now = datetime.now(UTC)
        for name in OPCUA_SENSORS:
            k = self.node_ids[name]
            bad = bool(snap.bad[INDEX[name]])
            dv = ua.DataValue(
                ua.Variant(snap.value(name), ua.VariantType.Double),
                StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure if bad else ua.StatusCodes.Good),
                SourceTimestamp=now,
                ServerTimestamp=now,
            )
            await self.server.write_attribute_value(k, dv)
        for name in ("line_stop", "reject_gate"):
            value = bool(getattr(self.plant, name))
            if self._served.get(name) != value:  # changed through the other PLC: mirror it here
                self._served[name] = value
                self._internal = True
                await self.server.write_attribute_value(
                    self.node_ids[name],
                    ua.DataValue(
                        ua.Variant(value, ua.VariantType.Boolean), SourceTimestamp=now, ServerTimestamp=now
                    ),
                )
                self._internal = False

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()


# ---- Modbus ---------------------------------------------------------------------------------


def encode_registers(snap: Snapshot) -> list[int]:
    """Holding registers 0..9 for a snapshot: float32 / uint32, big-endian words (ABCD)."""
    regs: list[int] = []
    for name, (_addr, dtype) in MODBUS_HOLDING.items():
        v = snap.value(name)
        raw = struct.pack(">I", int(v) & 0xFFFFFFFF) if dtype == "uint32" else struct.pack(">f", v)
        regs += [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]
    return regs


def holding_device(device_id: int, holding: list[int], action) -> SimDevice:
    """A pymodbus SimDevice whose holding registers start as `holding`; `action` serves each request."""
    return SimDevice(
        id=device_id,
        simdata=(
            [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(address=0, values=holding, datatype=DataType.REGISTERS)],
            [SimData(address=0, values=[0], datatype=DataType.REGISTERS)],
        ),
        action=action,
    )


class ModbusSim:
    """A pymodbus TCP server on host:port over the subclass's `_device()`."""

    host = "127.0.0.1"
    port: int
    server: ModbusTcpServer | None = None

    def _device(self) -> SimDevice:
        raise NotImplementedError

    async def start(self):
        self.server = ModbusTcpServer(self._device(), address=(self.host, self.port))
        await self.server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.shutdown()


class PressServer(ModbusSim):
    """pymodbus server (SimData/SimDevice) for the press and pump; reads are served from the latest tick."""

    def __init__(self, plant: Plant, recorder: Recorder, port: int, host: str = "127.0.0.1") -> None:
        self.plant, self.recorder = plant, recorder
        self.host, self.port = host, port
        self._registers = encode_registers(plant.snapshot())
        self._bad: set[int] = set()  # register addresses currently in dropout

    def _device(self) -> SimDevice:
        return holding_device(DEVICE_ID, [*self._registers, 0], self._action)

    async def _action(
        self, fc: int, start: int, address: int, count: int, regs: list[int], set_values: list | None
    ) -> ExcCodes | None:
        """Runs before pymodbus answers: fill reads from the plant, apply writes to it."""
        span = range(address, address + count)
        if fc in COIL_FCS:
            if set_values is not None:
                for i, v in enumerate(set_values):
                    if (name := MODBUS_COILS.get(address + i)) is not None:
                        self.plant.set_actuator(name, bool(v))
                        self.recorder.actuator_write("press", name, float(bool(v)))
            else:
                bits = [self.plant.line_stop, self.plant.reject_gate] + [False] * 14
                regs[0 - start] = SimUtils.bitsToRegisters(bits)[0]
            return None
        if fc not in (3, 6, 16):
            return None  # discrete inputs / input registers hold nothing of interest
        if set_values is not None:
            if any(a != MODBUS_HEARTBEAT for a in span):
                return ExcCodes.ILLEGAL_ADDRESS  # measured values are read-only
            value = int(set_values[0])
            self.plant.write_heartbeat("press", value)
            self.recorder.heartbeat("press", value)
            return None
        if self._bad.intersection(span):
            return ExcCodes.DEVICE_FAILURE  # dropout: the block holding a failed sensor
        regs[0 - start : len(self._registers) - start] = self._registers
        return None

    def push(self, snap: Snapshot) -> None:
        self._registers = encode_registers(snap)
        self._bad = set()
        for name, (addr, _dtype) in MODBUS_HOLDING.items():
            if snap.bad[INDEX[name]]:
                self._bad.update((addr, addr + 1))


# ---- the rig --------------------------------------------------------------------------------


class Rig:
    """Plant + fault injector + both PLCs behind gates, stepped in real time. Use `async with`.

    Ports: `opcua_port` / `modbus_port` are the public (gate) ports; 0 picks free ones.
    """

    def __init__(
        self,
        plant: Plant | None = None,
        injector: FaultInjector | None = None,
        recorder: Recorder | None = None,
        host: str = "127.0.0.1",
        opcua_port: int = 4840,
        modbus_port: int = 5020,
        security: OpcUaSecurityOptions | None = None,
    ) -> None:
        self.plant = plant or Plant()
        self.injector = injector or FaultInjector()
        self.recorder = recorder or Recorder()
        self.host = host
        self.opcua_gate = Gate(host, free_port(host), host, opcua_port)
        self.modbus_gate = Gate(host, free_port(host), host, modbus_port)
        self.conveyor = ConveyorServer(self.plant, self.recorder, self.opcua_gate.upstream[1], host, security)
        self.press = PressServer(self.plant, self.recorder, self.modbus_gate.upstream[1], host)
        self.injector.listeners.append(self._on_fault)
        self.started_mono = math.nan
        self._task: asyncio.Task | None = None
        self._fault_tasks: set[asyncio.Task] = set()
        self._events_seen = 0
        self._lock = {"conveyor": asyncio.Lock(), "press": asyncio.Lock()}

    @property
    def opcua_endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.opcua_gate.port}{OPCUA_PATH}"

    @property
    def modbus_port(self) -> int:
        return self.modbus_gate.port

    def gate(self, target: str) -> Gate:
        return self.opcua_gate if target == "conveyor" else self.modbus_gate

    async def start(self) -> Rig:
        await self.conveyor.start()
        await self.press.start()
        await self.opcua_gate.start()
        await self.modbus_gate.start()
        self.started_mono = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="hil-plant")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for t in list(self._fault_tasks):
            t.cancel()
        for t in list(self._fault_tasks):
            with contextlib.suppress(BaseException):
                await t
        await self.opcua_gate.stop()
        await self.modbus_gate.stop()
        await self.conveyor.stop()
        await self.press.stop()

    async def __aenter__(self) -> Rig:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        """Step the plant so that plant time tracks the monotonic clock, then push the tick's values."""
        tick = self.plant.params.tick_s
        t0, ticks0 = time.monotonic(), self.plant.ticks
        while True:
            due = int((time.monotonic() - t0) / tick) - (self.plant.ticks - ticks0)
            if due > 0:
                snap = self.injector.step(self.plant, min(due, 50))  # catch up, but never stall the loop
                self._record_events()
                self.press.push(snap)
                try:
                    await self.conveyor.push(snap)
                except Exception as exc:  # a server mid-restart must not kill the plant
                    log.debug("push failed: %s", exc)
            next_at = t0 + (self.plant.ticks - ticks0 + 1) * tick
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _record_events(self) -> None:
        for ev in self.plant.events[self._events_seen :]:
            self.recorder.event(ev.kind, ev.detail)
        self._events_seen = len(self.plant.events)

    # ---- communication faults ----

    def _on_fault(self, index: int, fault: FaultSpec, phase: str, plant_s: float) -> None:
        self.recorder.fault(index, fault, phase, plant_s)
        if fault.target is None:
            return
        gate = self.gate(fault.target)
        if fault.type == "connection_drop" and phase == "onset":
            gate.drop_connections()
        elif fault.type == "slow_responses":
            gate.delay_s = fault.delay_ms / 1000 if phase == "onset" else 0.0
        elif fault.type == "never_answers":
            if phase == "onset":
                gate.frozen = True
            else:
                gate.thaw()
        elif fault.type == "plc_restart":
            coro = self.take_down(fault.target) if phase == "onset" else self.bring_up(fault.target)
            task = asyncio.get_running_loop().create_task(coro)
            self._fault_tasks.add(task)
            task.add_done_callback(self._fault_tasks.discard)

    async def take_down(self, target: str) -> None:
        """The PLC goes away: its port refuses connections and every session breaks."""
        async with self._lock[target]:
            await self.gate(target).stop_listening()
            await (self.conveyor if target == "conveyor" else self.press).stop()

    async def bring_up(self, target: str) -> None:
        """The PLC is back on the same port, with a fresh address space (as after a power cycle)."""
        async with self._lock[target]:
            await (self.conveyor if target == "conveyor" else self.press).start()
            await self.gate(target).start()

    async def plc_restart(self, target: str, down_s: float) -> None:
        await self.take_down(target)
        await asyncio.sleep(down_s)
        await self.bring_up(target)


def address_map() -> str:
    lines = [f"OPC UA  namespace {NS_URI}"]
    for _name, (sid, vtype, writable) in OPCUA_NODES.items():
        lines.append(f"  nsu={NS_URI};s={sid:<22} {vtype.name:<8} {'writable' if writable else ''}")
    lines.append(f"Modbus TCP  device_id {DEVICE_ID}, 0-based, float32 ABCD")
    for name, (addr, dtype) in MODBUS_HOLDING.items():
        lines.append(f"  holding {addr}-{addr + 1:<3} {name:<20} {dtype}")
    lines.append(f"  holding {MODBUS_HEARTBEAT:<5} {'heartbeat':<20} uint16   writable")
    for addr, name in MODBUS_COILS.items():
        lines.append(f"  coil    {addr:<5} {name:<20} bool     writable")
    return "\n".join(lines)
