"""A stage's units as tasks of a dask.distributed cluster (`--scheduler ADDR` or `--workers N`).

`run_stage` calls `run_units` when its `Context` names a cluster: `prepare` and `finish` stay on the driver, each
unit still to do becomes one task (`_run_unit_task`) that runs `stage.run_unit` then `stage.flush` in a worker, so a
task's writes are on disk before it counts as done. A worker keeps one `Context` per (context spec, store) in
`_CONTEXTS`, so the model is built once per worker and run, not once per task. The driver only waits for the tasks'
keys (`as_completed`) and advances the stage's progress bar by each unit's `work`; it never holds the data.

Faults: a task whose worker dies is rescheduled by dask on another worker (`retries` covers errors raised inside
it); a unit marks itself done last, so a half-written unit is simply redone, and a rerun after the driver died lists
only the units not done (`Stage.units`), which are the only ones submitted.

Threads: the workers of a `LocalCluster` made for the run (`--workers N`) share the driver's cores, each running
torch with the driver's intra-op thread count ÷ N (at least 1), so N workers do not oversubscribe the machine.
Workers of a cluster the user started (`--scheduler`) run with the driver's count. Forward passes give the same
numbers with any thread count (capture, metrics, lesions, one-shot pruning are equal to the in-process run); the
weight gradients of a fine-tune are sums whose order follows the thread count, so fine-tuned pruning results equal
the in-process run to float32 rounding, and exactly when the thread counts are equal.

Worker processes are daemonic (both a `LocalCluster`'s and `dask worker`'s) and cannot start the image loader's own
processes, so inside a daemonic worker the loader reads images in the worker process itself (`loader_workers=0`);
results do not depend on it.
"""
from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import pickle
import uuid
from typing import Any

from .errors import ChanaxisError

_CONTEXTS: dict[Any, Any] = {}   # per worker process: (spec token, store) → Context


# -------------------------------------------------------------------- the client
class Cluster:
    """The client a run uses: one connected to `scheduler` (an address or a `distributed.Client`), or a
    `LocalCluster` of `workers` single-threaded worker processes made for the run and closed by `close`."""

    def __init__(self, scheduler=None, workers: int | None = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ChanaxisError("a cluster (--scheduler/--workers) needs dask.distributed: "
                                "pip install 'dask[distributed]'") from None
        self._own_client = self._cluster = None
        self._environ = dict(os.environ)  # restored at `close`: a nanny restarting a worker writes to it again
        self.local_workers = None      # N of a LocalCluster made here: they share this machine's cores
        if scheduler is not None and not isinstance(scheduler, str):
            self.client = scheduler                      # a live distributed.Client: the caller's to close
        elif scheduler:
            self.client = self._own_client = Client(scheduler)
        else:
            if workers is None or workers < 1:
                raise ChanaxisError(f"--workers must be at least 1 (got {workers})")
            with kept_environ():
                self._cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                             dashboard_address=":0")
            self.client = self._own_client = Client(self._cluster)
            self.local_workers = int(workers)
        self.announced = False

    def dashboard(self) -> str | None:
        return getattr(self.client, "dashboard_link", None)

    def gpus(self) -> bool:
        """Whether any worker offers a `GPU` resource (`dask worker --resources GPU=1`, LocalCUDACluster)."""
        info = self.client.scheduler_info()
        return any(w.get("resources", {}).get("GPU") for w in info.get("workers", {}).values())

    def close(self) -> None:
        if self._own_client is not None:
            self._own_client.close()
        if self._cluster is not None:
            self._cluster.close()
            restore_environ(self._environ)
        self._own_client = self._cluster = None


@contextlib.contextmanager
def kept_environ():
    """Undo what starting worker processes writes into this process's environment: dask's nanny sets
    `OMP_NUM_THREADS=1`, `MKL_NUM_THREADS=1`… in `os.environ` for its workers and leaves them there, so every process
    started later from here (a training subprocess, a tool) would run single-threaded. A nanny that restarts a
    killed worker writes them again: `Cluster.close` restores the environment it started with."""
    before = dict(os.environ)
    try:
        yield
    finally:
        restore_environ(before)


def restore_environ(before: dict) -> None:
    for k in set(os.environ) - set(before):
        del os.environ[k]
    for k, v in before.items():
        if os.environ.get(k) != v:
            os.environ[k] = v


# -------------------------------------------------------------------- what a worker needs to rebuild the context
def _picklable(obj) -> bytes | None:
    try:
        import cloudpickle
        return cloudpickle.dumps(obj)
    except Exception:  # noqa: BLE001 - whatever stops pickling means "cannot be sent"
        return None


def _store_rebuilds_model(run) -> bool:
    try:
        from .store import run_config
        return run_config(run)["model"].get("adapter") != "torch"
    except Exception:  # noqa: BLE001 - no store yet, or one without a model: it cannot rebuild one
        return False


def context_spec(ctx, run, stage) -> dict:
    """A small picklable description of `ctx` from which a worker builds its own `Context`."""
    inputs = {}
    for k, v in ctx.inputs.items():
        if _picklable(v) is not None:
            inputs[k] = v
    import sys
    torch = sys.modules.get("torch")
    # the driver's intra-op thread count (a local cluster divides it among its workers: see the module docstring)
    spec = {"device": ctx.device, "data_root": ctx.data_root, "loader_workers": ctx.loader_workers,
            "inputs": inputs, "model": None, "factory": None,
            "torch_threads": torch.get_num_threads() if torch is not None else None}
    if ctx.held_model is not None:
        if not _store_rebuilds_model(run):
            blob = _picklable(ctx.held_model)
            if blob is None:
                raise ChanaxisError(f"the {stage.name} stage's model cannot be sent to the cluster's workers (it does "
                                    "not pickle and the store cannot rebuild it); run without --workers/--scheduler")
            spec["model"] = blob
    elif ctx.model_factory is not None and not _store_rebuilds_model(run):
        spec["factory"] = _picklable(ctx.model_factory)
    return spec


def _worker_context(ctx_cls, spec: dict, token: str, run):
    """This worker's Context for `spec` and `run`: built once (so is the model), its memos reset for each new
    stage call (`token`), as a fresh in-process Context would have them."""
    import cloudpickle
    key = (hashlib.sha256(cloudpickle.dumps(spec)).hexdigest(), str(run))
    ctx, seen = _CONTEXTS.get(key, (None, None))
    if ctx is None:
        loader_workers = spec["loader_workers"]
        if spec.get("torch_threads"):
            import torch
            torch.set_num_threads(spec["torch_threads"])
        if multiprocessing.current_process().daemon:
            loader_workers = 0  # a daemonic process cannot start the loader's processes
        model = pickle.loads(spec["model"]) if spec["model"] else None
        factory = pickle.loads(spec["factory"]) if spec["factory"] else None
        ctx = ctx_cls(device=spec["device"], progress=False, model=model, model_factory=factory,
                      data_root=spec["data_root"], loader_workers=loader_workers, **spec["inputs"])
        _CONTEXTS.clear()   # one run at a time per worker: the previous run's model and memos go
    elif seen != token:
        ctx.reset()   # a new stage call: the model stays, the memos (images, tables, loaders) do not
    _CONTEXTS[key] = (ctx, token)
    return ctx


def _run_unit_task(stage_cls, params, ctx_cls, run, unit, spec: dict, token: str):
    """One unit in a worker: its context (built once per worker and run), the unit, then its writes flushed."""
    stage = stage_cls(params)
    ctx = _worker_context(ctx_cls, spec, token, run)
    stage.run_unit(run, unit, ctx)
    stage.flush(run, ctx)
    return unit.key


def _runs_network(stage, unit) -> bool:
    """Whether the unit runs the network (a GPU task where the cluster offers one): not the report's, nor the
    metrics stage's layer units (chunked reductions of the store); its gradient-geometry units do."""
    if stage.name == "metrics":
        return str(unit.key).startswith("geometry/")
    return stage.name != "report"


# -------------------------------------------------------------------- the driver
def run_units(stage, run, ctx, units, cluster: Cluster, bar, task) -> None:
    """Submit one task per unit of `units` and wait for them all, advancing `bar`'s `task` per finished unit."""
    from distributed import as_completed
    client = cluster.client
    if not cluster.announced and ctx.progress:
        from .progress import console
        console.print(f"[bold]cluster[/] {len(client.scheduler_info().get('workers', {}))} workers, dashboard "
                      f"{cluster.dashboard()}")
        cluster.announced = True
    spec = context_spec(ctx, run, stage)
    if cluster.local_workers and spec.get("torch_threads"):  # N local workers share the driver's cores
        spec["torch_threads"] = max(1, spec["torch_threads"] // cluster.local_workers)
    token = uuid.uuid4().hex[:12]
    gpus = str(ctx.device).startswith("cuda") and cluster.gpus()
    import cloudpickle
    [spec_f] = client.scatter([spec], broadcast=True) if len(cloudpickle.dumps(spec)) > 1 << 20 else [spec]
    futures = {}
    for u in units:
        f = client.submit(_run_unit_task, type(stage), stage.params, type(ctx), str(run), u, spec_f, token,
                          key=f"{stage.name}-{u.key}-{token}",
                          resources={"GPU": 1} if gpus and _runs_network(stage, u) else None, retries=2, pure=False)
        futures[f] = u
    try:
        for f in as_completed(list(futures)):
            f.result()   # a unit's error (after its retries) stops the stage here, as in-process
            bar.update(task, advance=futures[f].work)
    finally:
        for f in futures:
            f.cancel()


def worker_contexts() -> int:
    """How many contexts (model builds) this process keeps for tasks (at most one: the current run's)."""
    return len(_CONTEXTS)


def in_worker() -> bool:
    """Whether this code runs inside a dask worker (a task)."""
    try:
        from distributed import get_worker
        get_worker()
        return True
    except (ImportError, ValueError):
        return False


__all__ = ["Cluster", "context_spec", "in_worker", "kept_environ", "restore_environ", "run_units",
           "worker_contexts"]
