"""`phide eval --ray auto|ADDRESS`: the same rows, from an actor pool on a Ray cluster.

Ray Data maps the work items (one per sample, its missing modes) over a pool of actors, each
holding one engine (loaded once, by the CLI's loader), and streams the rows back to the driver,
which writes them (phide.tools.eval_runs.RowWriter: flushed as they arrive, never twice). Ray
Data restarts a dead actor and retries its item elsewhere, so a worker lost mid-run loses no
sample; a repeat of an item that did finish is dropped by the writer.

Resources per worker: on a cluster with GPUs one GPU each (as many workers as GPUs); on CPUs
alone a fraction of the machine, `cpus / (workers + 1)`, so one share stays free for Ray Data's
own tasks and the driver (on a 2-core laptop two workers take 0.67 CPU each).

Ray is the optional `phide[scale]` extra, imported only here.
"""

from __future__ import annotations

import json

from phide.errors import PhideError


class _EvalWorker:
    """One engine per actor; a batch is one work item (JSON), its rows come back as JSON."""

    def __init__(self, load_session, run_item, request: dict, threads: int, warm_up=None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.session = load_session()
        if warm_up is not None:  # (fn, item): one untimed request per mode before any row
            fn, item = warm_up
            fn(self.session, item, request, item["order"])
        self.run_item, self.request = run_item, request

    def __call__(self, batch):
        import numpy as np

        rows = [json.dumps(row) for item in batch["item"]
                for row in self.run_item(self.session, json.loads(item), self.request)]
        return {"row": np.array(rows, dtype=object)}


def worker_resources(cluster: dict, workers: int | None) -> tuple[int, dict, int]:
    """(workers, Ray resources per worker, torch threads per worker) for a cluster's resources."""
    gpus = int(cluster.get("GPU", 0))
    if gpus:
        if workers and workers > gpus:  # a worker holds a GPU: the extra ones would never be scheduled
            raise PhideError(f"--workers {workers}: the Ray cluster has {gpus} GPU(s), one per worker")
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}, 0
    cpus = float(cluster.get("CPU", 1))
    n = workers or max(1, int(cpus) - 1)
    share = cpus / (n + 1)
    return n, {"num_cpus": share}, max(1, int(share))


CONNECT_TIMEOUT_S = 30  # `--ray ADDRESS`: how long a cluster may take to answer (Ray itself retries for minutes)


def _probe(address: str, timeout: float) -> None:
    """An explicit HOST:PORT (or ray://HOST:PORT) must accept a TCP connection within `timeout`."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PhideError(f"--ray {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PhideError(f"--ray {address}: no Ray cluster answers there within {timeout:.0f} s ({exc})") from None


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S):
    """Ray, connected to the cluster `address` names ("auto": a running one, else a local one),
    within `timeout` seconds or one PhideError; called before the run directory is touched, so a
    cluster that cannot be reached leaves nothing."""
    if address != "auto":
        _probe(address, timeout)  # before Ray, which would retry an unreachable address for minutes
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data: the actor pool)
    except ImportError:
        raise PhideError("--ray needs Ray (pip install 'phide[scale]')") from None
    if not ray.is_initialized():
        import threading

        outcome: dict = {}

        def init():
            try:
                ray.init(address=None if address == "auto" else address, log_to_driver=False,
                         logging_level="WARNING")
                outcome["ok"] = True
            except Exception as exc:  # reported on the calling thread
                outcome["error"] = exc

        worker = threading.Thread(target=init, name="ray-connect", daemon=True)
        worker.start()
        worker.join(timeout)
        if "error" in outcome:
            raise PhideError(f"--ray {address}: cannot reach a Ray cluster ({outcome['error']})") from None
        if "ok" not in outcome:
            raise PhideError(f"--ray {address}: the cluster did not answer within {timeout:.0f} s")
    return ray


def run_on_ray(address: str, items: list[dict], request: dict, load_session, run_item, *,
               workers: int | None = None, warm_up=None):
    """Rows of `items` (eval_runs' work items, each run by `run_item(session, item, request)` on a
    worker) computed on a Ray cluster, yielded as they arrive."""
    ray = connect(address)
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines drown the rows' bar
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # phide's own bar counts rows
    n, resources, threads = worker_resources(ray.cluster_resources(), workers)
    ds = ray.data.from_items([{"item": json.dumps(it)} for it in items], override_num_blocks=len(items))
    rows = ds.map_batches(_EvalWorker, batch_size=1, concurrency=n, batch_format="numpy",
                          fn_constructor_kwargs={"load_session": load_session, "run_item": run_item,
                                                 "request": request, "threads": threads, "warm_up": warm_up},
                          **resources)
    for out in rows.iter_rows():
        yield json.loads(out["row"])
