"""One run per work folder: a live run's lock refuses, a dead run's lock is taken over, the lock goes with the run."""

import json
import os
import socket
import subprocess
import sys

import pytest

from fsq_ref.common.errors import InputError
from fsq_ref.training import runlock

HOST = socket.gethostname()


def _write_lock(workdir, pid, host=HOST):
    (workdir / runlock.LOCK).write_text(json.dumps({"pid": pid, "host": host}))


def _mine(workdir):
    return json.loads((workdir / runlock.LOCK).read_text()) == {"pid": os.getpid(), "host": HOST}


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


@pytest.fixture
def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    return child.pid


def test_the_lock_is_held_in_the_block_and_removed_after(tmp_path):
    workdir = tmp_path / "new" / "run"  # created if missing, as a run would
    with runlock.hold(workdir) as path:
        assert path == workdir / runlock.LOCK and _mine(workdir)
    assert not path.exists()
    with runlock.hold(workdir):  # and it can be taken again
        assert _mine(workdir)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_lock_is_removed_when_the_run_fails(tmp_path, error):
    with pytest.raises(error):
        with runlock.hold(tmp_path):
            raise error("the run broke")
    assert not (tmp_path / runlock.LOCK).exists()


def test_a_live_run_on_this_host_refuses(tmp_path, live_pid):
    _write_lock(tmp_path, live_pid)
    before = (tmp_path / runlock.LOCK).read_text()
    message = (f"{tmp_path} is in use by a run (pid {live_pid} on {HOST}): wait for it to finish, or use another "
               "--workdir")
    with pytest.raises(InputError) as refused:
        with runlock.hold(tmp_path):
            pytest.fail("entered a folder held by a live run")
    assert str(refused.value) == message
    assert (tmp_path / runlock.LOCK).read_text() == before  # the live run keeps its lock


def test_a_second_hold_in_the_same_process_refuses(tmp_path):
    with runlock.hold(tmp_path):
        with pytest.raises(InputError, match=f"pid {os.getpid()} on"):
            with runlock.hold(tmp_path):
                pass
        assert _mine(tmp_path)  # the refused attempt did not remove the outer block's lock


def test_a_process_of_another_user_counts_as_alive(tmp_path):
    _write_lock(tmp_path, 1)  # init: os.kill(1, 0) raises PermissionError unless we are root, where it succeeds
    with pytest.raises(InputError, match="pid 1 on"):
        with runlock.hold(tmp_path):
            pass


def test_a_run_on_another_host_is_not_second_guessed(tmp_path, dead_pid):
    _write_lock(tmp_path, dead_pid, host="elsewhere.invalid")  # dead here says nothing about there
    with pytest.raises(InputError, match="another host") as refused:
        with runlock.hold(tmp_path):
            pass
    assert f"delete {tmp_path / runlock.LOCK}" in str(refused.value) and "\n" not in str(refused.value)


def test_a_dead_runs_lock_is_taken_over(tmp_path, dead_pid):
    _write_lock(tmp_path, dead_pid)
    with runlock.hold(tmp_path):
        assert _mine(tmp_path)
    assert not (tmp_path / runlock.LOCK).exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left either


@pytest.mark.parametrize("content", [
    "", "garbage", "{", "null", "[1, 2]", '{"pid": 12}', '{"pid": "12", "host": "h"}', '{"pid": 1.5, "host": "h"}',
    # 0 and -1 must not reach os.kill, where they mean "my process group" and "every process": alive.
    json.dumps({"pid": 0, "host": HOST}), json.dumps({"pid": -1, "host": HOST}),
])
def test_a_garbled_lock_is_treated_as_stale(tmp_path, content):
    (tmp_path / runlock.LOCK).write_text(content)
    with runlock.hold(tmp_path):
        assert _mine(tmp_path)
    assert not (tmp_path / runlock.LOCK).exists()


def test_the_lock_of_a_run_that_took_over_is_not_removed(tmp_path, live_pid):
    # If another run replaced this run's lock, leaving the block must not delete the other run's lock.
    with runlock.hold(tmp_path):
        _write_lock(tmp_path, live_pid)
    assert json.loads((tmp_path / runlock.LOCK).read_text())["pid"] == live_pid
