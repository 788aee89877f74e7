"""Process lanes: a service in a worker process, requests answered in order, errors and worker
death reported as LaneError (a draft fault), a cancel flag shared across processes, and work
that really runs beside the caller's (its own GIL)."""

import os
import threading
import time

import pytest

from phide.errors import DraftFault
from phide.runtime.process_lane import LaneError, ProcessLane, SharedFlag


@pytest.fixture(scope="module")
def lane():
    lane = ProcessLane("lane_services:Probe", "t1", threads=1, name="probe")
    yield lane
    lane.close()


def test_worker_is_another_process_with_its_thread_count(lane):
    pid, threads, tag = lane.call("where")
    assert pid != os.getpid() and threads == 1 and tag == "t1"


def test_requests_are_answered_in_order(lane):
    lane.call("recall")  # drain
    for i in range(5):
        lane.post("remember", i)
    waits = [lane.submit("where"), lane.submit("recall")]
    assert waits[1].wait() == [0, 1, 2, 3, 4]  # waiting on a later reply drains the earlier ones
    assert waits[0].done() and waits[0].wait()[2] == "t1"
    assert waits[1].span[0] <= waits[1].span[1]  # the worker's perf_counter span of the call


def test_errors_come_back_and_the_worker_lives_on(lane):
    with pytest.raises(LaneError, match="ValueError: bad input"):
        lane.call("fail", "bad input")
    assert issubclass(LaneError, DraftFault)
    lane.post("fail", "posted failure")  # nobody waits on it: the next wait raises it
    with pytest.raises(LaneError, match="posted failure"):
        lane.call("where")
    assert lane.call("where")[2] == "t1"
    lane.post("fail", "at sync")
    with pytest.raises(LaneError, match="at sync"):
        lane.sync()


def test_cancel_flag_reaches_the_worker(lane):
    lane.cancel.clear()
    reply = lane.submit("wait_for_cancel", 10.0)
    time.sleep(0.05)
    assert not reply.done()
    t0 = time.perf_counter()
    lane.cancel.set()
    assert reply.wait(5.0) == "cancelled"
    assert time.perf_counter() - t0 < 1.0
    lane.cancel.clear()
    assert lane.call("wait_for_cancel", 0.05) == "timed out"


def test_work_runs_beside_the_caller_not_on_its_gil(lane):
    """Both sides run pure-Python loops for 0.4 s: one process would take 0.8 s (threads of one
    process take turns on the GIL); two take about 0.4 s."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores")
    t0 = time.perf_counter()
    reply = lane.submit("spin", 0.4)
    end, n = time.perf_counter() + 0.4, 0
    while time.perf_counter() < end:
        n += 1
    assert reply.wait() > 0 and n > 0
    assert time.perf_counter() - t0 < 0.65


def test_timeout_and_worker_death():
    lane = ProcessLane("lane_services:Probe", "t2", name="doomed")
    slow = lane.submit("spin", 0.5)
    with pytest.raises(TimeoutError):
        slow.wait(0.01)
    assert slow.wait() > 0
    with pytest.raises(LaneError, match="died"):
        lane.call("die")
    assert not lane.alive()
    with pytest.raises(LaneError, match="not running"):
        lane.submit("where")


def test_startup_errors_are_lane_errors():
    with pytest.raises(LaneError, match="no model here"):
        ProcessLane("lane_services:BrokenAtStart", name="broken")
    with pytest.raises(LaneError, match="ModuleNotFoundError"):
        ProcessLane("no_such_module_here:Thing", name="missing")


def test_close_stops_the_worker():
    lane = ProcessLane("lane_services:Probe", "t3", name="closing")
    pid = lane.call("where")[0]
    lane.close()
    assert not lane.alive()
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the worker outlived close()")


def test_shared_flag_between_threads_and_handles(tmp_path):
    a = SharedFlag()
    b = SharedFlag(a.path)  # a second mapping of the same byte (as the worker has)
    assert not a.is_set() and not b.is_set()
    threading.Thread(target=b.set).start()
    deadline = time.time() + 2
    while not a.is_set() and time.time() < deadline:
        time.sleep(0.001)
    assert a.is_set()
    a.clear()
    assert not b.is_set()
    os.unlink(a.path)


def test_a_worker_that_cannot_start_is_a_lane_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    with pytest.raises(LaneError, match="cannot start"):
        ProcessLane("lane_services:Probe", "t4", name="nostart")
