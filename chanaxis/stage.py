"""The stage contract: every step after the model (train, capture, metrics, trajectory, lesion, prune, report…).

A stage declares its name, the stages it needs, the model capabilities it requires and a frozen parameters class
(`chanaxis.params`); it splits its work into independent units with stable keys (`units`), runs one unit at a time
(`run_unit`, which writes only that unit's part of the store and marks it done last) and assembles the result
(`finish`). `run_stage` drives the loop; `analyze`, the CLI and the Python API are all built on it. Stages are found
through entry points (group `chanaxis.stages`), as adapters are, so a third party can add one.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable, ClassVar, Iterable

from . import capabilities
from .errors import ChanaxisError
from .locations import location
from .params import Params
from .progress import progress_bar

# the stages chanaxis ships; found this way too when it runs from a source checkout without entry points
BUILTIN = {
    "train": "chanaxis.training:TrainStage",
    "capture": "chanaxis.stages.capture:CaptureStage",
    "metrics": "chanaxis.stages.metrics:MetricsStage",
    "trajectory": "chanaxis.stages.trajectory:TrajectoryStage",
    "lesion": "chanaxis.interventions.lesion:LesionStage",
    "prune": "chanaxis.interventions.prune:PruneStage",
    "report": "chanaxis.report:ReportStage",
}


@dataclass(frozen=True)
class Unit:
    """One independent piece of a stage's work. `key` is stable across runs ("chunk/3", "layer/layer1.0.conv1",
    "cell/hull/0.2/42"), so a finished unit is recognised and never redone; `work` weighs it on the progress bar."""
    key: str
    data: Any = None
    work: float = 1.0


class Context:
    """What every unit of a run shares: the device, the one model build, the image loaders (`loader`, with
    `loader_workers` processes each; None: the usable cores), per-process memos and the progress bar.

    `model_factory(run)` builds the model a store was made from; `model(run)` calls it once per process and keeps
    the result, so every stage of a study (and every unit of a stage) uses the same build on the same device.

    `scheduler` (a dask.distributed address or `distributed.Client`) or `workers` (N ≥ 2: a `LocalCluster` of N
    single-threaded worker processes made for each stage) runs the stage's units as cluster tasks
    (`chanaxis.distributed`); with neither (or `workers` ≤ 1) everything runs in this process."""

    def __init__(self, device: str = "cpu", progress: bool = True, console=None, model=None,
                 model_factory: Callable | None = None, data_root: str | None = None,
                 loader_workers: int | None = None, scheduler=None, workers: int | None = None, **inputs):
        from .data.loader import check_workers
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ChanaxisError(f"workers must be a whole number of worker processes ≥ 0 (got {workers!r})")
        self.device = device
        self.scheduler = scheduler
        self.workers = workers
        self.loader_workers = check_workers(loader_workers)
        self.progress = progress
        self.console = console
        self.data_root = data_root
        self.inputs = inputs
        self._model = model
        self._factory = model_factory
        self._memo: dict[Any, Any] = {}
        self._cluster = None
        self.bar = None
        self._unit_progress = None  # the running unit's share of the stage's bar (set by run_stage)

    def model(self, run=None):
        """The study's model (built once; a store's model is checked against its weight hash by the factory)."""
        if self._model is None:
            if self._factory is None:
                from .reload import model_from_store
                self._factory = lambda r: model_from_store(r, device=self.device)
            self._model = self._factory(run)
        return self._model

    def advance(self, work: float) -> None:
        """Report part of the running unit's work as done, in the unit's own `Unit.work` measure (a cell of two
        parts says 1 after its first). Never past the unit's work; `run_stage` sets the bar exactly when the unit
        ends. Does nothing where no bar shows (--quiet, a cluster's task, a unit run outside `run_stage`)."""
        if self._unit_progress is not None:
            self._unit_progress.advance(work)

    def steps(self, total: int, done: int = 0, description: str | None = None) -> Callable[..., None]:
        """A counter of the running unit's `total` steps (`done` of them already done, e.g. on resume): call it
        once per step (`tick(n=1, description=None)`). The unit's share of the bar advances step by step; a stage
        of one unit (train) shows the steps themselves as the bar's total."""
        if self._unit_progress is None:
            return lambda n=1, description=None: None
        return self._unit_progress.steps(total, done, description)

    def memo(self, key, fn: Callable[[], Any]):
        """`fn()` computed once per process for `key` (evaluation images, score tables, a training split…)."""
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def loader(self, dataset):
        """The one `chanaxis.data.loader.Loader` of `dataset` in this process: its workers serve every unit of
        every stage that reads it (started on first use)."""
        from .data.loader import Loader
        return self.memo(("loader", id(dataset)), lambda: Loader(dataset, workers=self.loader_workers,
                                                                 device=self.device))

    @property
    def held_model(self):
        """The model given to, or already built by, this context (None: not yet built)."""
        return self._model

    @property
    def model_factory(self) -> Callable | None:
        return self._factory

    def uses_cluster(self) -> bool:
        return bool(self.scheduler) or (self.workers is not None and self.workers > 1)

    def cluster(self):
        """The `chanaxis.distributed.Cluster` of this context (made on first use), or None when it runs in-process."""
        if not self.uses_cluster():
            return None
        if self._cluster is None:
            from .distributed import Cluster
            self._cluster = Cluster(self.scheduler, self.workers)
        return self._cluster

    def close_cluster(self) -> None:
        """Close a cluster this context made (a `Client` given as `scheduler` stays the caller's)."""
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def reset(self) -> None:
        """Drop every memo (loaders first, so their processes end); the model stays."""
        self.forget("loader")
        self._memo.clear()

    def forget(self, prefix: str) -> None:
        for k in [k for k in self._memo if isinstance(k, tuple) and k and k[0] == prefix]:
            del self._memo[k]


class Stage:
    """Base of every stage. Subclasses set the class attributes and implement `units`, `run_unit`, `finish`."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()          # model capabilities (chanaxis.capabilities.KNOWN)
    Params: ClassVar[type[Params]]
    presets: ClassVar[dict[str, Params]] = {}
    help: ClassVar[str] = ""
    study_path: ClassVar[str] = "run.zarr"            # where the stage reads and writes inside an analyze folder
    status_key: ClassVar[str] = ""                    # the store's status key, when it is not `name` (see below)
    node: ClassVar[str | None] = None                 # its node: done only with the status *and* the node there
    writes: ClassVar[bool] = True                     # False: a read-only stage (no lock; works on read-only stores)
    in_process: ClassVar[bool] = False                # True: never sent to a cluster (units run in this process)
    # what the stage promises in the store: node → {variable: (dims, units)}; a "*" in the node stands for every
    # child (e.g. "layers/*"); the conformance suite checks each is there with these dims and a `units` attr
    outputs: ClassVar[dict[str, dict[str, tuple[tuple[str, ...], str]]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not cls.__dict__.get("status_key") and "name" in cls.__dict__:
            cls.status_key = cls.name

    def __init__(self, params: Params | None = None, **kwargs):
        if params is not None and not isinstance(params, self.Params):
            raise TypeError(f"{self.name} takes {self.Params.__name__}, not {type(params).__name__}")
        self.params = self.Params.make(params, **kwargs)

    @classmethod
    def preset(cls, name: str) -> Params:
        """The named preset's parameters (defaults where the stage has no such preset)."""
        return cls.presets.get(name, cls.Params())

    # ---------------------------------------------------------------- the contract
    def prepare(self, run, ctx: Context) -> None:
        """Check inputs and create the stage's skeleton in the store (idempotent: a resumed run keeps it)."""

    def units(self, run) -> list[Unit]:
        """The units still to do (a finished unit is never listed)."""
        raise NotImplementedError

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        raise NotImplementedError

    def flush(self, run, ctx: Context) -> None:
        """Wait until what the units run so far in `ctx` wrote is on disk. A stage may let a unit's writes overlap
        the next unit's compute (capture does); whoever runs units one at a time in separate contexts (another
        process, a cluster task) calls this after each."""

    def finish(self, run, ctx: Context) -> Any:
        """Assemble the stage's node from its units and mark the stage done."""

    def done(self, run) -> bool:
        from . import store
        return (location(run).exists() and store.stage_state(run, self.status_key) == "done"
                and (self.node is None or self.node in store.open_group(run)))

    def check_capabilities(self, model) -> None:
        for cap in self.requires:
            capabilities.require(model, cap, what=f"the {self.name} stage")


def run_stage(stage: Stage, run, ctx: Context, order: Callable[[list[Unit]], Iterable[Unit]] | None = None):
    """prepare → every unit still to do (in `order`, default as listed) → finish. Returns `finish`'s result.

    When `ctx` names a cluster (`scheduler`/`workers`), the units run as its tasks (`chanaxis.distributed`).

    A writing stage holds the store's writer lock (`chanaxis.safety.WriterLock`) throughout, so a second process
    on the same store stops with a clear message instead of interleaving its writes."""
    from .safety import WriterLock
    lock = WriterLock(run) if stage.writes else None
    try:
        if lock:
            lock.acquire()  # a folder that does not exist yet is locked as soon as `prepare` has made it
        stage.prepare(run, ctx)
        if lock:
            lock.acquire()
        todo = list(stage.units(run))
        if order is not None:
            todo = list(order(todo))
        # a cluster only where there is something to share out: one unit (train, report) runs here, as does a
        # stage that says it must (`in_process`: it prints to the console, holds a live object…)
        cluster = ctx.cluster() if len(todo) > 1 and not stage.in_process else None
        with progress_bar(ctx.progress and bool(todo)) as bar:
            ctx.bar = bar
            total = sum(u.work for u in todo) or 1
            task = bar.add_task(stage.name, total=total)
            if cluster is not None:  # each unit a task on the cluster (advanced as each ends); prepare and finish
                from .distributed import run_units  # stay here
                run_units(stage, run, ctx, todo, cluster, bar, task)
            else:
                done = 0
                for u in todo:
                    unit = ctx._unit_progress = _UnitProgress(bar, task, done, u.work, alone=len(todo) == 1)
                    stage.run_unit(run, u, ctx)
                    unit.finish()
                    ctx._unit_progress = None
                    done += u.work
                    if unit.own_total is not None:
                        total = unit.own_total
            # exactly its total at the end: in-unit steps are fractions, whose float sum may fall short of it
            bar.update(task, completed=total)
            ctx.bar = None
        return stage.finish(run, ctx)
    finally:
        ctx.bar = None
        ctx._unit_progress = None
        ctx.forget("loader")  # the stage's loaders (and their worker processes) end with it
        ctx.close_cluster()   # a cluster made for the run ends with the stage
        if lock:
            lock.release()


class _UnitProgress:
    """One unit's share of its stage's bar: [`start`, `start + work`] in the stage's work units. `advance` moves
    within it (never past its end); `steps` counts the unit's own steps — as the bar itself when the unit is the
    stage's only one (`alone`: the bar then shows the steps), else as fractions of its share. `finish` puts the bar
    exactly at the unit's end (or the steps' total)."""

    def __init__(self, bar, task, start: float, work: float, alone: bool = False):
        self.bar, self.task, self.start, self.work, self.alone = bar, task, start, work, alone
        self.done = 0.0
        self.own_total = None   # the steps' total, when they are the bar's

    def advance(self, work: float) -> None:
        if self.own_total is not None:
            return
        self.done = min(self.work, self.done + work)
        self.bar.update(self.task, completed=self.start + self.done)

    def steps(self, total: int, done: int = 0, description: str | None = None):
        total = max(1, int(total))
        if self.alone and self.done == 0:  # the stage's only unit, nothing reported yet: its steps are the bar's
            self.own_total = total
            self.bar.update(self.task, total=total, completed=min(done, total),
                            **({"description": description} if description else {}))

            def tick(n: int = 1, description: str | None = None) -> None:
                self.bar.update(self.task, advance=n, **({"description": description} if description else {}))
            return tick
        base, share = self.done, self.work - self.done
        count = {"n": min(done, total)}

        def tick(n: int = 1, description: str | None = None) -> None:
            count["n"] = min(total, count["n"] + n)
            self.done = min(self.work, base + share * count["n"] / total)
            self.bar.update(self.task, completed=self.start + self.done,
                            **({"description": description} if description else {}))
        return tick

    def finish(self) -> None:
        if self.own_total is not None:
            self.bar.update(self.task, completed=self.own_total)
        else:
            self.done = self.work
            self.bar.update(self.task, completed=self.start + self.work)


# -------------------------------------------------------------------- the registry
def targets() -> dict[str, str]:
    """name → "module:Class" of every stage: the built-in ones, then those registered under `chanaxis.stages`."""
    found = dict(BUILTIN)
    for ep in entry_points(group="chanaxis.stages"):
        found[ep.name] = ep.value
    return found


def load(name: str, target: str) -> type[Stage]:
    mod, _, attr = target.partition(":")
    try:
        return getattr(import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ChanaxisError(f"the stage '{name}' ({target}) failed to load: {e}") from None


def stages() -> dict[str, type[Stage]]:
    """name → Stage class, every registered stage."""
    return {name: load(name, target) for name, target in targets().items()}


def get(name: str) -> type[Stage]:
    """The Stage class registered as `name` (only that one is imported)."""
    found = targets()
    if name not in found:
        import difflib
        near = difflib.get_close_matches(name, list(found), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise ChanaxisError(f"unknown stage '{name}'; {hint}stages are: {', '.join(order())}")
    return load(name, found[name])


def order(names: Iterable[str] | None = None) -> list[str]:
    """Stage names in registry order, each moved after the stages it needs; a cycle is an error."""
    reg = stages()
    todo = list(reg) if names is None else [n for n in reg if n in set(names)]
    out: list[str] = []
    while todo:
        ready = next((n for n in todo if all(m in out or m not in todo for m in reg[n].needs)), None)
        if ready is None:
            raise ChanaxisError(f"the stages {', '.join(todo)} need each other in a cycle")
        out.append(ready)
        todo.remove(ready)
    return out


# -------------------------------------------------------------------- the Python API
def api(stage_cls: type[Stage], fn: Callable) -> Callable:
    """Give `fn(fixed..., **params)` the real signature and docstring: its own arguments, then every field of the
    stage's parameters as keyword-only with its default, unit and help (what `help(chanaxis.<stage>)` shows)."""
    import dataclasses
    import inspect
    sig = inspect.signature(fn)
    fixed = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in fixed}
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
             for f in dataclasses.fields(stage_cls.Params) if f.name not in taken]
    lines = []
    for d in stage_cls.Params.describe():
        unit = f" [{d['unit']}]" if d["unit"] and d["unit"] != "1" else ""
        none = f" (None: {d['none']})" if d.get("none") else ""
        lines.append(f"    {d['name']} = {d['default']!r}{unit}: {d['help']}{none}")
    fn.__signature__ = sig.replace(parameters=fixed + extra)
    fn.__doc__ = (fn.__doc__ or "").rstrip() + f"\n\n{stage_cls.name} parameters ({stage_cls.Params.__name__}):\n" \
        + "\n".join(lines) + "\n"
    return fn

