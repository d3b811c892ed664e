"""CPU, memory, disk and hot-path figures of the real controller at 1,000 tags polled every 100 ms
by default (a measurement, not a pass/fail test).

    .venv/bin/python -m benchmarks.controller_load [--devices 10] [--poll-s 0.1] [--seconds 60]
                                                   [--warmup 5] [--profile 10] [--outbox] [--json out.json]

--devices sets the line's size: that many PLCs of 100 tags each (1: 100 tags, 50: 5,000 tags), and
--poll-s their poll interval, for sizing a controller by tag count and rate (docs/sizing.md).

1. A subprocess runs --devices (10) pymodbus TCP servers on free 127.0.0.1 ports, 100 tags each (half float32,
   half int16 x 0.1, the layout of benchmarks.modbus_load). Every poll interval (100 ms) it steps a simulated
   process: each tag is its set point plus a span times a few shared, wandering factors
   (mean-reverting random walks with 2-8 s time constants: 3 seen by every PLC, 2 per PLC) plus
   its own noise. The time constants are short enough for 300 s of training (3,000 rows) to see
   the walk's spread; with minute-long ones the model alarms on a large share of live frames.
2. A second subprocess fits a StreamingDetector (default DetectorSpec) on --fit-rows rows of the
   same process (same set points, spans and loadings; another random walk) read the way the
   driver decodes it, and saves the model. It runs apart so the controller's peak RSS is not the
   fit's.
3. A line config (TOML, temp dir) is written and validated with load_config: --devices [[modbus]]
   PLCs x 100 tags at poll_interval_s = 0.1, plus one writable register on plc0 for the only action
   (shadow mode, on the line alarm); [detector] over all the read-only tags with the model;
   alarms: line anomaly, comm loss per PLC, one threshold with deadband. state_dir and a free
   api_port in the temp dir / on 127.0.0.1. No watchdog. No [sync], unless --outbox: then a
   [sync] table with `enabled = false`, so the outbox fills as it does while the cloud is
   unreachable (nothing is sent), and the window measures its growth (bytes per hour on disk).
4. controller.runtime.Controller runs in this process. After all PLCs deliver and --warmup s,
   the window of --seconds measures: process CPU per wall second (time.process_time and
   getrusage), peak RSS (ru_maxrss) and VmRSS at the end of the window, batches per second,
   controller.step_latency (the hot path the controller times itself: line state, detector,
   alarms, actions; not the summarizer) and the whole `handle_batch` call (timed by a wrapper this
   benchmark puts in `Controller.batch_handler`, the public per-batch hook), driver reads and
   missed ticks, the server subprocess's CPU (psutil if installed, else /proc/<pid>/stat), and
   which heavy libraries the running service imported (scikit-learn, scipy beyond what numba
   loads itself, asyncua, influxdb_client: none is needed for a Modbus line without [sync]).
5. Then, if --profile > 0, cProfile over `handle_batch` calls for that many seconds (after the
   window, so it does not perturb it), and last, with the controller stopped, the detector's own
   step cost at the line's tag count: StreamingDetector.step on --frames frames, all tags fresh, and as the
   controller feeds it (one PLC's 100 tags fresh per step).

The servers, the controller and this process's timers share the machine; nothing here can tell
whether anything else was using the CPU, so read the figures as "measured here".
"""

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.latency import machine_facts, summarize_ns
from benchmarks.modbus_load import free_ports, layout

DEVICES = 10  # PLCs on the line; main() sets it from --devices (the subprocesses get the flag too)
TAGS = 100  # tags per PLC
POLL_S = 0.1  # poll interval of every PLC; main() sets it from --poll-s
FIT_SEED, SERVER_SEED, BENCH_SEED = 1, 2, 3  # random walks; the structure (seed 0) is shared
RESERVED_REGISTER = 2 * (TAGS // 2) + (TAGS - TAGS // 2)  # first register after the tags: 150
BOTTLENECK_PIECES = {  # (file suffix, function) -> label, for the profile breakdown
    ("controller/linestate.py", "apply"): "LineState.apply",
    ("controller/linestate.py", "gather_frame"): "LineState.gather_frame",
    ("models/detector.py", "step"): "StreamingDetector.step",
    ("controller/pipeline.py", "decide"): "StepPipeline.decide (alarms, actions)",
    ("controller/pipeline.py", "_summarize"): "StepPipeline._summarize",
}


# ---------------------------------------------------------------- the simulated process

def device_tags(d: int) -> list[dict]:
    """The modbus_load layout, names prefixed with the PLC (tag names are unique across a line)."""
    return [{**t, "name": f"plc{d}_{t['name']}"} for t in layout(TAGS)]


def all_tags() -> list[dict]:
    return [t for d in range(DEVICES) for t in device_tags(d)]


class Process:
    """Every tag = set point + span x (its mix of shared factors + its own noise).

    The factors are Ornstein-Uhlenbeck random walks (pulled back to 0, time constants 2-8 s):
    N_GLOBAL act on every PLC, N_LOCAL on one PLC only, so tags move together like a plant's.
    `structure` fixes set points, spans and loadings (the servers and the training data must
    share them); `seed` drives the walk.
    """

    N_GLOBAL = 3
    N_LOCAL = 2
    NOISE = 0.15  # own noise, relative to the (unit) spread of a tag's factor mix

    def __init__(self, seed: int, structure: int = 0, dt: float | None = None) -> None:
        dt = POLL_S if dt is None else dt
        s = np.random.default_rng(structure)
        tags = all_tags()
        n, k = len(tags), self.N_GLOBAL + self.N_LOCAL * DEVICES
        load = np.zeros((n, k))
        load[:, :self.N_GLOBAL] = s.normal(0.0, 1.0, (n, self.N_GLOBAL))
        for d in range(DEVICES):
            cols = slice(self.N_GLOBAL + d * self.N_LOCAL, self.N_GLOBAL + (d + 1) * self.N_LOCAL)
            load[d * TAGS:(d + 1) * TAGS, cols] = s.normal(0.0, 1.0, (TAGS, self.N_LOCAL))
        self.load = load / np.linalg.norm(load, axis=1, keepdims=True)
        self.is_float = np.array([t["dtype"] == "float32" for t in tags])
        self.scale = np.array([t.get("scale", 1.0) for t in tags])
        self.setpoint = np.where(self.is_float, s.uniform(50.0, 500.0, n), s.uniform(20.0, 80.0, n))
        self.span = np.where(self.is_float, self.setpoint * s.uniform(0.01, 0.04, n), s.uniform(1.0, 3.0, n))
        phi = np.exp(-dt / s.uniform(2.0, 8.0, k))
        self.phi, self.kick = phi, np.sqrt(1.0 - phi**2)
        self.rng = np.random.default_rng(seed)
        self.factors = self.rng.normal(0.0, 1.0, k)
        self.n, self.k = n, k

    def step(self) -> np.ndarray:
        """The next row of true values (every POLL_S)."""
        self.factors = self.phi * self.factors + self.kick * self.rng.normal(0.0, 1.0, self.k)
        return self.setpoint + self.span * (self.load @ self.factors
                                            + self.NOISE * self.rng.normal(0.0, 1.0, self.n))

    def as_read(self, values: np.ndarray) -> np.ndarray:
        """Values as the driver decodes them from the registers (float32; int16 raw x scale)."""
        return np.where(self.is_float, values.astype(np.float32).astype(np.float64),
                        np.round(values / self.scale) * self.scale)

    def registers(self, values: np.ndarray) -> np.ndarray:
        """(DEVICES, 150) uint16 holding registers, ABCD order, in the layout of `layout()`."""
        v = values.reshape(DEVICES, TAGS)
        f = self.is_float[:TAGS]
        floats = np.ascontiguousarray(v[:, f]).astype(">f4").view(">u2").astype(np.int64)
        raw = np.round(v[:, ~f] / self.scale[:TAGS][~f]).astype(np.int16).astype(np.uint16)
        return np.concatenate([floats, raw.astype(np.int64)], axis=1)


# ---------------------------------------------------------------- server subprocess

async def serve(ports: list[int]) -> None:
    """One pymodbus server per port; the process steps every POLL_S; exit when stdin closes."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    proc = Process(SERVER_SEED)
    current: list[list[int]] = [[*row, 0] for row in proc.registers(proc.step()).tolist()]

    def action_for(d: int):
        async def action(fc: int, start: int, address: int, count: int, registers: list[int],
                         set_values: list | None) -> None:
            if set_values is not None:  # the reserved register (the shadow action never writes)
                current[d][address:address + len(set_values)] = [int(x) for x in set_values]
            else:
                registers[address - start:address - start + count] = current[d][address:address + count]
        return action

    servers = []
    for d, port in enumerate(ports):
        device = SimDevice(id=1, simdata=[SimData(0, values=[0] * (RESERVED_REGISTER + 1),
                                                  datatype=DataType.REGISTERS)], action=action_for(d))
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        servers.append(server)

    async def update() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            for d, row in enumerate(proc.registers(proc.step()).tolist()):
                current[d] = [*row, current[d][RESERVED_REGISTER]]
            due += POLL_S
            await asyncio.sleep(max(0.0, due - loop.time()))

    updater = asyncio.create_task(update())
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    updater.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await updater
    for server in servers:
        await server.shutdown()


# ---------------------------------------------------------------- fit subprocess

def fit(path: str, rows: int) -> None:
    """Fit on `rows` rows of the process (POLL_S apart), save to `path`, print figures as JSON."""
    from models import DetectorSpec, StreamingDetector

    t0 = time.perf_counter()  # compile (or load from cache) the kernels on a tiny fit first
    StreamingDetector([f"t{i}" for i in range(4)], DetectorSpec(iforest_trees=5)).fit(
        np.random.default_rng(0).normal(size=(200, 4)))
    jit_s = time.perf_counter() - t0
    proc = Process(FIT_SEED)
    x = np.stack([proc.as_read(proc.step()) for _ in range(rows)])
    det = StreamingDetector([t["name"] for t in all_tags()], DetectorSpec())
    t0 = time.perf_counter()
    det.fit(x, np.arange(rows) * POLL_S)
    fit_s = time.perf_counter() - t0
    det.save(path)
    pca = det.summary.get("pca", {})
    print(json.dumps({"rows": rows, "tags": det.n, "fit_s": fit_s, "jit_and_tiny_fit_s": jit_s,
                      "threshold_on": det.threshold, "pca_components": pca.get("components"),
                      "calibration_exceedance": det.summary["calibration_exceedance"],
                      "fit_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "model_bytes": os.path.getsize(path)}))


# ---------------------------------------------------------------- the line config

def write_config(directory: Path, ports: list[int], api_port: int, model: Path, outbox: bool) -> Path:
    proc = Process(FIT_SEED)
    lines = ["# written by benchmarks.controller_load", "[controller]", 'site = "bench"',
             f'line = "load-{DEVICES * TAGS}"', 'state_dir = "./state"', f"api_port = {api_port}", ""]
    for d, port in enumerate(ports):
        lines += ["[[modbus]]", f'name = "plc{d}"', 'host = "127.0.0.1"', f"port = {port}",
                  "timeout_s = 1.0", f"poll_interval_s = {POLL_S}", ""]
        for t in device_tags(d):
            lines += ["  [[modbus.tags]]", *(f"  {k} = {json.dumps(v)}" for k, v in t.items()), ""]
        if d == 0:
            lines += ["  [[modbus.tags]]", '  name = "plc0_reject"', '  table = "holding_register"',
                      f"  address = {RESERVED_REGISTER}", '  dtype = "int16"', "  writable = true", ""]
    tag0 = all_tags()[0]["name"]
    high = proc.setpoint[0] + 6 * proc.span[0]
    lines += ["[detector]", f'model = "{model.name}"', "",
              "[[alarms]]", 'name = "line_anomaly"', 'source = "line"', 'priority = "high"',
              "on_delay_s = 0.3", ""]
    for d in range(DEVICES):
        lines += ["[[alarms]]", f'name = "plc{d}_comm_loss"', f'source = "comm:plc{d}"',
                  'priority = "high"', ""]
    lines += ["[[alarms]]", f'name = "{tag0}_high"', f'source = "threshold:{tag0} > {high:.3f}"',
              f"deadband = {proc.span[0]:.3f}", 'priority = "medium"', "",
              "[[actions]]", 'name = "reject"', 'alarm = "line_anomaly"',
              'write = { tag = "plc0_reject", value = 1 }', "min_interval_s = 1.0", "shadow = true", ""]
    if outbox:  # the outbox fills, nothing is sent: a cloud outage, as seen by the disk
        lines += ["[sync]", 'url = "http://127.0.0.1:9"', 'org = "bench"', 'bucket = "bench"',
                  "enabled = false", ""]
    path = directory / "line.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- measuring

def rss_mb() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def child_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (psutil if installed, else /proc/<pid>/stat)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class BatchTimer:
    """Put in `Controller.batch_handler` (the public hook the supervisors call for every batch):
    times each whole `handle_batch` call; optionally profiles it."""

    def __init__(self, controller) -> None:
        self.controller = controller
        self.inner = controller.handle_batch
        self.seconds: list[float] = []
        self.alarm_batches = 0
        self.profiler: cProfile.Profile | None = None
        controller.batch_handler = self

    def __call__(self, plc, batch) -> None:
        t0 = time.perf_counter()
        if self.profiler is None:
            self.inner(plc, batch)
        else:
            self.profiler.runcall(self.inner, plc, batch)
        self.seconds.append(time.perf_counter() - t0)
        self.alarm_batches += self.controller.line_alarm


def heavy_modules() -> dict[str, int]:
    """Modules of the libraries the service should not need here, by library (count of modules).
    numba itself imports the bare `scipy` package and `scipy.linalg` (its BLAS bridge) whenever
    scipy is installed; those are counted apart as "scipy (numba's own)"."""
    out: dict[str, int] = {}
    for name in list(sys.modules):
        top, _, rest = name.partition(".")
        if top == "scipy":
            own = rest == "" or rest.startswith(("_", "version", "linalg"))
            key = "scipy (numba's own)" if own else "scipy"
        elif top in ("sklearn", "asyncua", "influxdb_client"):
            key = top
        else:
            continue
        out[key] = out.get(key, 0) + 1
    return out


def lat_summary(seconds: np.ndarray) -> dict:
    us = seconds * 1e6
    p50, p90, p99, p999 = np.percentile(us, [50, 90, 99, 99.9])
    return {"n": int(us.size), "mean_us": float(us.mean()), "p50_us": float(p50), "p90_us": float(p90),
            "p99_us": float(p99), "p999_us": float(p999), "max_us": float(us.max())}


def snapshot(controller, timer: BatchTimer, server_pid: int) -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": time.perf_counter(), "cpu": time.process_time(), "utime": ru.ru_utime,
            "stime": ru.ru_stime, "nvcsw": ru.ru_nvcsw, "nivcsw": ru.ru_nivcsw,
            "server_cpu": child_cpu_s(server_pid), "written": controller.step_latency.written,
            "full": len(timer.seconds), "alarm_batches": timer.alarm_batches,
            "event_id": controller.events.last_id,
            "outbox": None if controller.outbox is None else (controller.outbox.backlog(),
                                                              controller.outbox.file_bytes()),
            "plcs": [(p.driver.stats.reads, p.driver.stats.read_errors, p.driver.stats.batches,
                      p.driver.missed_ticks) for p in controller.plcs]}


def profile_rows(profiler: cProfile.Profile, batches: int, top: int = 15) -> dict:
    stats = pstats.Stats(profiler).stats  # (file, line, func) -> (cc, nc, tottime, cumtime, callers)
    total = sum(tt for _, _, tt, _, _ in stats.values())
    rows = []
    for (file, line, func), (_, nc, tt, ct, _) in sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]:
        where = f"{'/'.join(Path(file).parts[-2:])}:{line}({func})" if line else func
        rows.append({"function": where, "calls_per_batch": nc / batches,
                     "tottime_us_per_batch": tt / batches * 1e6, "cumtime_us_per_batch": ct / batches * 1e6,
                     "share_of_total": tt / total if total else float("nan")})
    pieces = {}
    for (file, _, func), (_, nc, _, ct, _) in stats.items():
        for (suffix, name), label in BOTTLENECK_PIECES.items():
            if func == name and file.endswith(suffix):
                pieces[label] = {"calls_per_batch": nc / batches, "cumtime_us_per_batch": ct / batches * 1e6}
    return {"batches": batches, "total_us_per_batch": total / batches * 1e6, "pieces": pieces, "top": rows}


async def run_controller(config_path: Path, args: argparse.Namespace, server_pid: int) -> dict:
    from controller.config import load_config
    from controller.runtime import Controller

    cfg = load_config(config_path)
    rss_before = rss_mb()["VmRSS"]
    controller = Controller(cfg)
    timer = BatchTimer(controller)
    ready = asyncio.Event()
    task = asyncio.create_task(controller.run(on_ready=lambda _c: ready.set()))
    try:
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raise the start-up error
        deadline = time.monotonic() + 30
        while any(p.driver.stats.last_alive < 0 for p in controller.plcs):
            if time.monotonic() > deadline:
                silent = [p.name for p in controller.plcs if p.driver.stats.last_alive < 0]
                raise RuntimeError(f"not every PLC delivered within 30 s: {', '.join(silent)}")
            await asyncio.sleep(0.05)
        rss_started = rss_mb()["VmRSS"]
        await asyncio.sleep(args.warmup)
        s0 = snapshot(controller, timer, server_pid)
        await asyncio.sleep(args.seconds)
        s1 = snapshot(controller, timer, server_pid)
        mem = rss_mb()
        maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        heavy = heavy_modules()

        ring = controller.step_latency
        if s1["written"] - s0["written"] > ring.ring.shape[0]:
            raise RuntimeError("the window outgrew controller.step_latency's ring; shorten --seconds")
        step = ring.ring[np.arange(s0["written"], s1["written"]) % ring.ring.shape[0]]
        full = np.asarray(timer.seconds[s0["full"]:s1["full"]])
        events = [e for e in controller.events.since(s0["event_id"], limit=1 << 30)
                  if e["id"] <= s1["event_id"]]
        det = controller.detector
        final = {"flagged_tags_at_end": int(np.count_nonzero(det.tag_flags)),
                 "active_alarms_at_end": list(controller.alarms.active())}
        state_dir = Path(controller.state_dir.path)

        profile = None
        if args.profile > 0:
            timer.profiler = cProfile.Profile()
            n0 = len(timer.seconds)
            await asyncio.sleep(args.profile)
            profiler, timer.profiler = timer.profiler, None
            profile = profile_rows(profiler, max(1, len(timer.seconds) - n0))
    finally:
        controller.stop()
        await task

    wall = s1["wall"] - s0["wall"]
    disk = {"state_dir_files_after_stop": {str(f.relative_to(state_dir)): f.stat().st_size
                                           for f in sorted(state_dir.rglob("*")) if f.is_file()}}
    if s0["outbox"] is not None:
        (_, points0, bytes0), file0 = s0["outbox"]
        (_, points1, bytes1), file1 = s1["outbox"]
        disk["outbox"] = {"points_per_hour": (points1 - points0) / wall * 3600,
                          "payload_bytes_per_hour": (bytes1 - bytes0) / wall * 3600,
                          "file_bytes_per_hour": (file1 - file0) / wall * 3600,
                          "file_bytes_at_end_of_window": file1}
    batches = s1["written"] - s0["written"]
    plcs = []
    for p, a, b in zip(controller.plcs, s0["plcs"], s1["plcs"], strict=True):
        plcs.append({"name": p.name, "polls_per_s": (b[2] - a[2]) / wall, "reads_per_s": (b[0] - a[0]) / wall,
                     "read_errors": b[1] - a[1], "missed_ticks": b[3] - a[3]})
    return {
        "wall_s": wall,
        "cpu_s_per_wall_s": (s1["cpu"] - s0["cpu"]) / wall,
        "rusage_user_s_per_wall_s": (s1["utime"] - s0["utime"]) / wall,
        "rusage_sys_s_per_wall_s": (s1["stime"] - s0["stime"]) / wall,
        "context_switches_per_s": {"voluntary": (s1["nvcsw"] - s0["nvcsw"]) / wall,
                                   "involuntary": (s1["nivcsw"] - s0["nivcsw"]) / wall},
        "heavy_modules_loaded": heavy,
        "rss_mb": {"after_imports_and_config": rss_before, "controller_running_before_warmup": rss_started,
                   "end_of_window_VmRSS": mem["VmRSS"], "peak_ru_maxrss": maxrss_mb,
                   "peak_VmHWM": mem["VmHWM"]},
        "batches_per_s": batches / wall,
        "expected_batches_per_s": DEVICES / POLL_S,
        "step_latency": lat_summary(step),
        "whole_handle_batch": lat_summary(full),
        "hot_path_share_of_process_cpu": float(full.sum()) / max(s1["cpu"] - s0["cpu"], 1e-9),
        "line_alarm_batch_fraction": (s1["alarm_batches"] - s0["alarm_batches"]) / max(batches, 1),
        "events_in_window": dict(Counter(f"{e['kind']}:{e['source']}" for e in events)),
        **final,
        "plcs": plcs,
        "server_subprocess_cpu_s_per_wall_s": (s1["server_cpu"] - s0["server_cpu"]) / wall,
        "disk": disk,
        "profile": profile,
    }


def detector_step_cost(model_path: Path, frames: int) -> dict:
    """StreamingDetector.step alone at the line's tag count: all fresh (0.1 s apart) and as the
    controller feeds it."""
    from models import load_model

    det = load_model(model_path, expected_tags=[t["name"] for t in all_tags()])
    det.warm_up()
    proc = Process(BENCH_SEED)
    ones = np.ones(det.n, dtype=np.uint8)
    out = {}
    lat = np.empty(frames, dtype=np.int64)
    alarm = np.zeros(frames, dtype=bool)
    for k in range(frames):
        x = proc.as_read(proc.step())
        t0 = time.perf_counter_ns()
        alarm[k] = det.step(k * POLL_S, x, ones, ones)
        lat[k] = time.perf_counter_ns() - t0
    out["all_fresh"] = {**summarize_ns(lat), "alarm_fraction": float(alarm.mean())}
    det.reset()
    held = proc.as_read(proc.step())
    masks = np.zeros((DEVICES, det.n), dtype=np.uint8)
    for d in range(DEVICES):
        masks[d, d * TAGS:(d + 1) * TAGS] = 1
    row = held
    for k in range(frames):
        d = k % DEVICES
        if d == 0:
            row = proc.as_read(proc.step())
        held[d * TAGS:(d + 1) * TAGS] = row[d * TAGS:(d + 1) * TAGS]
        t0 = time.perf_counter_ns()
        alarm[k] = det.step(k * POLL_S / DEVICES, held, masks[d], ones)
        lat[k] = time.perf_counter_ns() - t0
    out["one_plc_fresh_per_step"] = {**summarize_ns(lat), "alarm_fraction": float(alarm.mean())}
    out["frames"] = frames
    return out


# ---------------------------------------------------------------- output

def report(res: dict) -> None:
    m, c, f, d = res["machine"], res["controller"], res["fit"], res["detector_step"]
    print(f"machine: {m['cpu_model']}, {m['cpus_usable']} usable CPU(s), Python {m['python']}, "
          f"loadavg at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}")
    print(f"line: {DEVICES} Modbus TCP PLCs x {TAGS} tags (half float32, half int16), "
          f"poll {POLL_S * 1e3:.0f} ms; detector over {f['tags']} tags; servers in a subprocess")
    print(f"model fit: {f['rows']} rows x {f['tags']} tags, default DetectorSpec: {f['fit_s']:.2f} s "
          f"(+ {f['jit_and_tiny_fit_s']:.2f} s kernel compile/cache load first); PCA components "
          f"{f['pca_components']}, threshold {f['threshold_on']:.3f}, model file "
          f"{f['model_bytes'] / 1e6:.1f} MB, fit process peak RSS {f['fit_process_peak_rss_mb']:.0f} MB")
    print(f"controller window: {c['wall_s']:.1f} s after {res['args']['warmup']:g} s warm-up")
    print(f"  process CPU:            {c['cpu_s_per_wall_s']:.3f} CPU-s per wall-s "
          f"(getrusage: user {c['rusage_user_s_per_wall_s']:.3f} + sys {c['rusage_sys_s_per_wall_s']:.3f})")
    cs = c["context_switches_per_s"]
    print(f"  context switches:       {cs['voluntary']:.0f}/s voluntary, "
          f"{cs['involuntary']:.0f}/s involuntary")
    r = c["rss_mb"]
    print(f"  RSS:                    {r['end_of_window_VmRSS']:.0f} MB at end of window (VmRSS), "
          f"peak {r['peak_ru_maxrss']:.0f} MB (ru_maxrss; VmHWM {r['peak_VmHWM']:.0f} MB); "
          f"{r['after_imports_and_config']:.0f} MB "
          f"before Controller(), {r['controller_running_before_warmup']:.0f} MB once running")
    print(f"  service RSS at {DEVICES * TAGS:,} Modbus tags: {r['end_of_window_VmRSS']:.0f} MB")
    heavy = c["heavy_modules_loaded"]
    print("  heavy imports:          " + (", ".join(f"{k} ({v} modules)" for k, v in sorted(heavy.items()))
                                          or "none"))
    print(f"  batches received:       {c['batches_per_s']:.1f}/s "
          f"(expected {c['expected_batches_per_s']:.0f}/s)")
    for label, key in (("hot path (step_latency)", "step_latency"),
                       ("whole handle_batch call", "whole_handle_batch")):
        s = c[key]
        print(f"  {label + ':':<25}p50 {s['p50_us']:6.1f} us  p90 {s['p90_us']:6.1f} us  "
              f"p99 {s['p99_us']:6.1f} us  max {s['max_us']:7.1f} us  mean {s['mean_us']:6.1f} us  "
              f"(n={s['n']})")
    print(f"  handle_batch share of process CPU: {c['hot_path_share_of_process_cpu'] * 100:.1f} %")
    print(f"  line alarm on in {c['line_alarm_batch_fraction'] * 100:.2f} % of batches; tags with a flag at "
          f"end: {c['flagged_tags_at_end']}; active alarms at end: {c['active_alarms_at_end'] or 'none'}")
    events = ", ".join(f"{k} x{v}" for k, v in sorted(c["events_in_window"].items())) or "none"
    print(f"  events in window:       {events}")
    polls = [p["polls_per_s"] for p in c["plcs"]]
    print(f"  per PLC: {min(polls):.2f}..{max(polls):.2f} polls/s, "
          f"{c['plcs'][0]['reads_per_s']:.1f} read requests/s each, read errors "
          f"{sum(p['read_errors'] for p in c['plcs'])}, "
          f"missed ticks {sum(p['missed_ticks'] for p in c['plcs'])}")
    print(f"server subprocess CPU:    {c['server_subprocess_cpu_s_per_wall_s']:.3f} CPU-s per wall-s "
          f"({DEVICES} pymodbus servers + the process simulation)")
    disk = c["disk"]
    if "outbox" in disk:
        o = disk["outbox"]
        print(f"outbox while nothing is sent: {o['points_per_hour']:,.0f} points/h, payload "
              f"{o['payload_bytes_per_hour'] / 1e6:.1f} MB/h, SQLite files "
              f"{o['file_bytes_per_hour'] / 1e6:.1f} MB/h "
              f"({o['file_bytes_at_end_of_window'] / 1e6:.1f} MB at the end of the window)")
    print("state dir after stop: " + (", ".join(f"{name} {size:,} B" for name, size in
                                                disk["state_dir_files_after_stop"].items()) or "empty"))
    for label, key in ((f"all {DEVICES * TAGS:,} tags fresh", "all_fresh"),
                       (f"one PLC's {TAGS} fresh", "one_plc_fresh_per_step")):
        s = d[key]
        print(f"detector step alone, {label}: p50 {s['p50_us']:6.1f} us  p99 {s['p99_us']:6.1f} us  "
              f"max {s['max_us']:7.1f} us  mean {s['mean_us']:6.1f} us  (n={s['n']}; line alarm on "
              f"in {s['alarm_fraction'] * 100:.1f} % of frames)")
    p = c["profile"]
    if p:
        print(f"cProfile over {p['batches']} handle_batch calls ({res['args']['profile']:g} s, after the "
              f"window; profiling inflates Python-level calls, the numba kernel is one call): "
              f"{p['total_us_per_batch']:.1f} us per batch")
        for label, s in p["pieces"].items():
            print(f"  {label:<38} {s['cumtime_us_per_batch']:7.1f} us cumulative per batch "
                  f"({s['calls_per_batch']:.2f} calls)")
        print(f"  {'tottime/batch':>13} {'cum/batch':>10} {'calls/batch':>11}  function")
        for row in p["top"]:
            print(f"  {row['tottime_us_per_batch']:10.1f} us {row['cumtime_us_per_batch']:7.1f} us "
                  f"{row['calls_per_batch']:11.2f}  {row['function']}")


def main() -> None:
    global DEVICES, POLL_S
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=DEVICES, help="PLCs of 100 tags each (10: 1,000 tags)")
    p.add_argument("--poll-s", type=float, default=POLL_S, help="poll interval of every PLC, seconds")
    p.add_argument("--outbox", action="store_true",
                   help="add [sync] with enabled = false and measure the outbox's growth on disk")
    p.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds after every PLC delivers, before the window")
    p.add_argument("--profile", type=float, default=10.0,
                   help="seconds of cProfile over handle_batch (0: none)")
    p.add_argument("--fit-rows", type=int, default=3000)
    p.add_argument("--frames", type=int, default=10_000, help="frames for the detector step cost")
    p.add_argument("--json", dest="json_path", default=None, help="write all figures to this file")
    p.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run the servers on these ports
    p.add_argument("--fit", help=argparse.SUPPRESS)  # internal: fit and save the model here
    args = p.parse_args()
    if args.devices < 1:
        p.error("--devices must be at least 1")
    if not 0.01 <= args.poll_s <= 10:
        p.error("--poll-s must be between 0.01 and 10 seconds")
    DEVICES, POLL_S = args.devices, args.poll_s
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.serve:
        asyncio.run(serve([int(x) for x in args.serve.split(",")]))
        return
    if args.fit:
        fit(args.fit, args.fit_rows)
        return

    res: dict = {"args": {k: v for k, v in vars(args).items() if k not in ("serve", "fit")},
                 "machine": machine_facts()}
    with tempfile.TemporaryDirectory(prefix="controller_load_") as tmp:
        directory = Path(tmp)
        model = directory / "model.npz"
        done = subprocess.run([sys.executable, "-m", "benchmarks.controller_load", "--fit", str(model),
                               "--fit-rows", str(args.fit_rows), "--devices", str(DEVICES),
                               "--poll-s", str(POLL_S)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"fitting failed:\n{done.stderr}")
        res["fit"] = json.loads(done.stdout.strip().splitlines()[-1])
        *ports, api_port = free_ports(DEVICES + 1)
        config_path = write_config(directory, ports, api_port, model, args.outbox)
        server = subprocess.Popen([sys.executable, "-m", "benchmarks.controller_load", "--serve",
                                   ",".join(map(str, ports)), "--devices", str(DEVICES),
                                   "--poll-s", str(POLL_S)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError("server subprocess did not start")
            res["controller"] = asyncio.run(run_controller(config_path, args, server.pid))
        finally:
            server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.terminate()
                server.wait(timeout=10)
        res["detector_step"] = detector_step_cost(model, args.frames)
    report(res)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(res, f, indent=2, default=float)
        print(f"figures written to {args.json_path}")


if __name__ == "__main__":
    main()
