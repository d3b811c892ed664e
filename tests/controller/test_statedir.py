"""State directory: token permissions, atomic state, damaged files set aside."""

import os
import stat

import pytest

from controller.statedir import STATE_FILE, StateDir


def test_creating_the_object_does_no_io_create_makes_the_directory(tmp_path):
    sd = StateDir(tmp_path / "state")
    assert not (tmp_path / "state").exists()
    sd.create()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_token_is_created_once_with_mode_0600(tmp_path):
    sd = StateDir(tmp_path / "state")
    sd.create()
    token = sd.token()
    assert len(token) >= 32
    assert stat.S_IMODE((tmp_path / "state" / "api-token").stat().st_mode) == 0o600
    assert StateDir(tmp_path / "state").token() == token


def test_state_round_trip_and_damaged_file_is_set_aside(tmp_path):
    sd = StateDir(tmp_path)
    assert sd.load_state() == {}
    sd.save_state({"alarms": {"line": "acked"}})
    assert sd.load_state() == {"alarms": {"line": "acked"}}
    (tmp_path / STATE_FILE).write_text('{"alarms": ')  # torn write from an old version, say
    assert sd.load_state() == {}
    assert any(p.name.startswith(f"{STATE_FILE}.damaged-") for p in tmp_path.iterdir())


def test_concurrent_saves_never_fail_or_tear_the_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    sd = StateDir(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: sd.save_state({"n": i}), range(200)))
    assert sd.load_state()["n"] in range(200)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content", ["", "\n", "short", "x" * 31, "has spaces in it " * 3])
def test_an_empty_or_short_token_file_is_replaced_with_a_warning(tmp_path, caplog, content):
    """A 0-byte token left by a first start on a full disk made every mutating call 401 forever."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "api-token").write_text(content)
    with caplog.at_level("WARNING", logger="controller.statedir"):
        token = StateDir(state).token()
    assert len(token) >= 32 and (state / "api-token").read_text().strip() == token
    assert stat.S_IMODE((state / "api-token").stat().st_mode) == 0o600
    assert "not a valid token" in caplog.text and "wrote a new one" in caplog.text
    assert StateDir(state).token() == token  # kept from now on
    assert [p.name for p in state.iterdir()] == ["api-token"]  # no temp file left behind


def test_a_token_readable_by_others_is_made_private(tmp_path):
    state = tmp_path / "state"
    token = StateDir(state).token()
    os.chmod(state / "api-token", 0o644)
    assert StateDir(state).token() == token
    assert stat.S_IMODE((state / "api-token").stat().st_mode) == 0o600
