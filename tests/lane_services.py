"""Services for tests/test_process_lane.py: the lane's worker imports them by name (it gets
this process's sys.path, where pytest put tests/)."""

import os
import time

import torch


class Probe:
    def __init__(self, cancel, tag):
        self.cancel, self.tag, self.seen = cancel, tag, []

    def where(self):
        return os.getpid(), torch.get_num_threads(), self.tag

    def remember(self, x):
        self.seen.append(x)

    def recall(self):
        return list(self.seen)

    def fail(self, msg):
        raise ValueError(msg)

    def spin(self, seconds):
        """Pure-Python work (it holds this process's GIL throughout)."""
        end, n = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            n += 1
        return n

    def wait_for_cancel(self, limit):
        end = time.perf_counter() + limit
        while not self.cancel.is_set():
            if time.perf_counter() > end:
                return "timed out"
            time.sleep(0.001)
        return "cancelled"

    def die(self):
        os._exit(3)


class BrokenAtStart:
    def __init__(self, cancel):
        raise RuntimeError("no model here")
