"""The event journal of a real `linesentry run` process: ids and operator records survive kill -9
and restarts, `events --since` reads across them, and a journal that cannot be written (a full disk,
an unwritable file) is one log line while the controller keeps running on events in memory.

The controller runs the demo config with its PLCs on closed ports (the comm-loss alarms give it
something to report) and no model; the CLI commands run in this process (typer's runner) against
its API. A full disk is a write the kernel refuses: the child's RLIMIT_FSIZE makes a write past the
limit fail (EFBIG; SQLite reports a disk I/O error, as for some ENOSPC cases), with no tiny filesystem.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.eventstore import JOURNAL_FILE
from hil_tests.rig.net import free_port
from hil_tests.rig.service_process import LAUNCH, ROOT, ServiceProcess, closed_ports_config

CANNOT_WRITE = "cannot write"
QUIET_S = 11.0  # two retries (every 5 s), and past the log's rate limit (10 s) that could hide a repeat
runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def service(tmp_path):
    """Make the Service of this test (one config, one state dir); it is killed at the end."""
    made: list[ServiceProcess] = []

    def make(file_limit: int | None = None) -> ServiceProcess:
        made.append(ServiceProcess(closed_ports_config(tmp_path), file_limit))
        return made[-1]

    yield make
    for s in made:
        s.close()


def integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def wait_alarm(service: ServiceProcess, name: str, state: str) -> None:
    deadline = time.monotonic() + 20
    while next(a for a in service.get("/alarms") if a["name"] == name)["state"] != state:
        assert time.monotonic() < deadline, f"{name} never became {state}"
        time.sleep(0.05)


def test_ids_and_operator_records_survive_kill_9_and_since_reads_across_restarts(service, tmp_path):
    s = service()
    s.start()
    config = str(s.config)
    wait_alarm(s, "press_comm_loss", "UNACK")
    assert "acknowledged" in cli("ack", config, "press_comm_loss", "--user", "ann")
    cli("shelve", config, "conveyor_comm_loss", "--for", "10m", "--user", "bob", "--reason", "cable swap")
    before = s.events()
    assert s.kill9() == -signal.SIGKILL  # right after the answer: the request's record was written before it
    killed_at = time.time()
    journal = tmp_path / "state" / JOURNAL_FILE
    assert integrity(journal) == "ok"

    s.start()
    after = s.events()
    old = {e["id"]: e for e in after if e["id"] <= before[-1]["id"]}
    # Everything the API showed up to a flush interval before the kill is in the journal, as it was
    # (JSON-equal: the same id, time, kind, source, message and fields); the operator's two requests
    # were written before their answers.
    for e in before:
        if e["time"] < killed_at - 1.0 or e.get("user") in ("ann", "bob"):
            assert old.get(e["id"]) == e, e
    shelved = next(e for e in after if e["source"] == "conveyor_comm_loss" and e.get("user") == "bob")
    assert shelved["reason"] == "cable swap" and shelved["role"] == "operator"
    assert "cable swap" in shelved["message"]
    acked = next(e for e in after if e["source"] == "press_comm_loss" and e.get("user") == "ann")
    assert acked["role"] == "operator" and acked["state"] == "ACKED"
    new = [e for e in after if e["id"] > before[-1]["id"]]
    assert any(e["kind"] == "controller" and e["message"].startswith("started") for e in new), new
    ids = [e["id"] for e in after]
    assert ids == sorted(set(ids)), "ids must go on after a restart, never repeat"

    # `events --since` across the restart, through the CLI: the last 3 events before it and the new ones
    boundary = before[-1]["id"] - 3
    page = cli("events", config, "--since", str(boundary), "--json")
    lines = [json.loads(line) for line in page.splitlines()]
    assert [e["id"] for e in lines] == [i for i in ids if i > boundary]
    table = cli("events", config, "--since", str(boundary))
    assert "bob (operator)" in table or boundary >= shelved["id"]
    assert s.stop() == 0


def test_repeated_kill_9_during_a_burst_of_requests_never_damages_the_journal(service, tmp_path):
    """Kill -9 while operator requests and their journal writes are under way, three times: every
    restart opens the same file (no "damaged" warning), and ids only grow."""
    s = service()
    journal = tmp_path / "state" / JOURNAL_FILE
    seen: list[int] = []
    for _ in range(3):
        s.start()
        config, stop, done = str(s.config), threading.Event(), []

        def churn(config=config, stop=stop, done=done) -> None:
            while not stop.is_set():
                runner.invoke(app, ["shelve", config, "conveyor_comm_loss", "--for", "1m", "--reason", "r"])
                runner.invoke(app, ["unshelve", config, "conveyor_comm_loss"])
                done.append(1)

        worker = threading.Thread(target=churn)
        worker.start()
        deadline = time.monotonic() + 30  # the kill lands in the middle of a burst already under way
        while len(done) < 3:
            assert time.monotonic() < deadline, "no shelve/unshelve pair answered within 30 s"
            time.sleep(0.01)
        assert s.kill9() == -signal.SIGKILL
        stop.set()
        worker.join(30)
        assert integrity(journal) == "ok"
        s.start()
        ids = [e["id"] for e in s.events()]
        assert ids == sorted(set(ids)) and ids[-1] > (seen[-1] if seen else 0)
        seen.append(ids[-1])
        assert s.kill9() == -signal.SIGKILL
    assert "damaged" not in s.log(), s.log()
    assert sum(1 for line in s.log().splitlines() if "event journal" in line) == 0, s.log()


def test_a_full_disk_is_one_log_line_and_the_controller_keeps_running(service, tmp_path):
    """Requests until a journal write fails at the limit, and on for QUIET_S: a failure may heal
    (a checkpoint moves the write-ahead log into the database and frees room in it). Each failure
    is one line and each recovery one (retries are silent: test_events_journal checks that alone);
    every request is answered and its events are served, from memory while the journal fails."""
    journal = tmp_path / "state" / JOURNAL_FILE
    limit = 96 * 1024
    s = service(file_limit=limit)
    s.start()
    config = str(s.config)

    def journal_lines() -> list[str]:
        return [line.strip() for line in s.log().splitlines() if "event journal" in line]

    for _ in range(2000):  # until the first write fails
        cli("shelve", config, "conveyor_comm_loss", "--for", "1m", "--reason", "full disk test")
        if journal_lines():
            break
    assert journal_lines() and CANNOT_WRITE in journal_lines()[0], s.log()
    end = time.monotonic() + QUIET_S
    while time.monotonic() < end:
        cli("shelve", config, "conveyor_comm_loss", "--for", "1m", "--reason", "full disk test")
    lines = journal_lines()
    failed = [CANNOT_WRITE in line for line in lines]
    assert not any(a and b for a, b in zip(failed, failed[1:], strict=False)), "\n".join(lines)
    assert all(ok or "writing again" in line for ok, line in zip(failed, lines, strict=True)), lines
    assert "kept in memory" in lines[0]
    for path in (journal, Path(f"{journal}-wal")):
        assert path.stat().st_size <= limit
    last = s.events()[-1]
    cli("shelve", config, "conveyor_comm_loss", "--for", "1m", "--reason", "still answered")
    new = s.events(last["id"])
    # the request's event, whatever else (a driver's reconnect) the run added meanwhile
    assert [e.get("reason") for e in new].count("still answered") == 1 and new[0]["id"] == last["id"] + 1
    assert "line score" in cli("status", config)
    print(f"\n{len(lines)} journal lines, the first: {lines[0]}")
    assert "Traceback" not in s.log()
    assert s.stop() == 0, s.log()
    assert integrity(journal) == "ok"


def test_an_unwritable_journal_file_is_one_log_line_and_events_stay_in_memory(service, tmp_path):
    s = service()
    s.start()
    assert s.stop() == 0
    journal = tmp_path / "state" / JOURNAL_FILE
    journal.chmod(0o444)
    immutable = os.geteuid() == 0  # root writes a 0444 file anyway: make it immutable instead
    if immutable:
        subprocess.run(["chattr", "+i", str(journal)], check=True)
    try:
        s.start()
        config = str(s.config)
        cli("shelve", config, "conveyor_comm_loss", "--for", "1m", "--reason", "read-only journal")
        assert any(e.get("reason") == "read-only journal" for e in s.events())  # from memory
        time.sleep(0.5)
        lines = [line for line in s.log().splitlines() if "event journal" in line]
        assert len(lines) == 1 and CANNOT_WRITE in lines[0], s.log()
        print(f"\n{lines[0].strip()}")
        assert s.stop() == 0, s.log()
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(journal)], check=True)
    db = sqlite3.connect(journal)
    assert not db.execute("SELECT count(*) FROM events WHERE fields LIKE '%read-only journal%'").fetchone()[0]
    db.close()


def stream_until_unflushed_event(s: ServiceProcess, since: int) -> dict[int, dict]:
    """Read the event stream from `since` until an event that a driver task adds (a failed
    reconnect) arrives, then kill -9 at once: housekeeping writes it within 50 ms, so the kill
    usually beats the flush. Returns the events the stream served, by id."""
    seen: dict[int, dict] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/api/v1/events/stream?since={since}",
                                timeout=10) as stream:
        while raw := stream.readline():
            if raw.startswith(b"data:"):
                event = json.loads(raw[5:])
                seen[event["id"]] = event
                if event["kind"] == "driver" and "connection lost" in event["message"]:
                    assert s.kill9() == -signal.SIGKILL
                    return seen
    raise AssertionError("the stream ended before a driver event")


def stored_ids(journal: Path) -> set[int]:
    db = sqlite3.connect(journal)
    try:
        return {row[0] for row in db.execute("SELECT id FROM events")}
    finally:
        db.close()


def test_an_id_the_api_served_is_never_reused_after_a_kill_9_before_its_flush(service, tmp_path):
    """A client saw id N on the stream, the controller was killed before N reached the journal:
    after the restart no other event has id N, and `events --since N` shows every new one (the
    restart used to number from the last id on disk, giving N to the restart's own events)."""
    s = service()
    journal = tmp_path / "state" / JOURNAL_FILE
    lost_tries = 0
    for _ in range(8):  # until a kill beat a flush (usually at once)
        s.start()
        since = s.get("/status")["events"]["last_id"]
        seen = stream_until_unflushed_event(s, since)
        lost = set(seen) - stored_ids(journal)  # served, then killed before its flush
        s.start()
        after = s.events(since)
        for e in after:
            assert e["id"] not in seen or e == seen[e["id"]], f"{e['id']} was {seen[e['id']]}, now {e}"
        started = next(e for e in after if e["kind"] == "controller" and e["message"].startswith("started"))
        assert started["id"] > max(seen), (started, max(seen))
        assert started in s.events(max(seen))  # the client's next `events --since N` sees the restart
        assert s.kill9() == -signal.SIGKILL
        if lost:
            lost_tries += 1
            break
    assert lost_tries, "no kill came before a flush in 8 tries: the test never reached the window"


def test_a_second_controller_on_the_same_state_dir_is_refused_at_start(service, tmp_path):
    """Another line's config (its own API port) pointing at this line's state_dir by mistake: the
    second `linesentry run` is one error line and exit 2; the first runs on, its ids unshared."""
    first = service()
    first.start()
    other = tmp_path / "other.toml"
    other.write_text(re.sub(r"^api_port = \d+$", f"api_port = {free_port()}", first.config.read_text(),
                            flags=re.M))
    second = subprocess.run([*LAUNCH, "run", str(other)], capture_output=True, text=True, timeout=60,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert second.returncode == 2, second.stdout + second.stderr
    errors = [line for line in second.stderr.splitlines() if "error" in line.lower()]
    assert errors and f"another controller (pid {first.proc.pid})" in errors[-1], second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    assert first.get("/status")["controller"]["started_at"]
    assert first.stop() == 0


@pytest.mark.parametrize("replacement", ["directory", "symbolic link"])
def test_a_journal_replaced_while_running_is_one_error_line(service, tmp_path, replacement):
    """The file removed and a directory or a link put in its place under a running controller:
    SQLite writes on into the removed file (lost at the next start), silently before."""
    s = service()
    s.start()
    journal = tmp_path / "state" / JOURNAL_FILE
    journal.unlink()
    if replacement == "directory":
        journal.mkdir()
    else:
        journal.symlink_to(tmp_path / "elsewhere.sqlite")
    deadline = time.monotonic() + 10
    while not (lines := [line for line in s.log().splitlines() if "event journal" in line]):
        assert time.monotonic() < deadline, s.log()
        time.sleep(0.1)
    time.sleep(6)  # another check: still one line
    lines = [line for line in s.log().splitlines() if "event journal" in line]
    assert len(lines) == 1 and f"was replaced by a {replacement}" in lines[0], lines
    assert s.stop() == 0
