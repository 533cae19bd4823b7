"""Where the cases of a batch run: in this process, in N local worker processes, or as tasks on a Ray cluster.

Every executor runs the same function, :func:`analyse_case`, on a case folder and hands back a :class:`CaseWork`
(the report and the artifacts the output writer needs, or the reason the case failed). Only the driver
(:func:`pathasst.agent.runner.run_batch`) writes outputs, so the atomic, resumable output layout is identical
whichever executor ran the case, and output folders need to exist only where the driver runs.

* :class:`InlineExecutor` runs the cases one after another with the driver's own :class:`Engine` (the default).
* :class:`ProcessExecutor` runs them in ``workers`` local processes (``spawn``); each worker builds one Engine and
  keeps it for all its cases, so tool weights load once per worker. Torch threads are split between the workers.
* :class:`RayExecutor` submits one Ray task per case with the resources given in the settings
  (``ray_num_cpus_per_case``, ``ray_memory_per_case_mb``) to a cluster at ``ray_address`` (or a local instance).
  Inside a case task, a tool that tiles a large image (:mod:`pathasst.tools.backends.tiling`) sends its tile batches
  out as Ray tasks of their own when there are at least ``ray_tile_min_batches`` of them, so one large slide is spread
  over the cluster instead of one worker. Workers keep their Engine between tasks (weights load once per worker).

Case inputs must be readable at the same path on every worker (a shared file system), as with any cluster batch.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pathasst.agent.engine import Engine
from pathasst.core.cases import CaseError
from pathasst.core.settings import Settings
from pathasst.tools.backends.tiling import use_tile_mapper
from pathasst.tools.base import ToolResult

__all__ = [
    "CaseJob",
    "CaseWork",
    "ExecutorError",
    "InlineExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "analyse_case",
    "make_executor",
]

log = logging.getLogger(__name__)


class ExecutorError(RuntimeError):
    """The executor itself cannot run (Ray not installed or unreachable, bad worker count)."""


@dataclass(frozen=True)
class CaseJob:
    case_dir: Path
    question: str | None
    cases_root: Path

    @property
    def case_id(self) -> str:
        return self.case_dir.name


@dataclass
class CaseWork:
    """The outcome of analysing one case: ``report`` + ``artifacts`` when ``ok``, else ``reason``."""

    case_id: str
    status: Literal["ok", "failed"]
    reason: str = ""
    report: Any = None  # pathasst.planning.report.Report
    artifacts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    worker: str = ""


def _slim(artifacts: dict[str, Any]) -> dict[str, Any]:
    """Artifacts reduced to what the output writer uses (overlay, features): less to send between processes."""
    out: dict[str, Any] = {}
    for key, res in artifacts.items():
        if isinstance(res, ToolResult):
            out[key] = ToolResult(output=res.output, overlay=res.overlay, features=res.features)
        else:
            out[key] = res
    return out


def analyse_case(engine: Any, job: CaseJob) -> CaseWork:
    """Run one case with ``engine``; an input error or any exception becomes a failed :class:`CaseWork`."""
    import time

    t0 = time.perf_counter()
    worker = f"{os.uname().nodename}:{os.getpid()}"
    try:
        report, artifacts = engine.run(case_dir=job.case_dir, question=job.question, cases_root=job.cases_root)
    except CaseError as exc:
        return CaseWork(job.case_id, "failed", f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0,
                        worker=worker)
    except Exception as exc:  # noqa: BLE001 - per-case isolation: one broken case never stops the batch
        log.error("case %s failed:\n%s", job.case_id, traceback.format_exc())
        return CaseWork(job.case_id, "failed", f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0,
                        worker=worker)
    return CaseWork(job.case_id, "ok", report=report, artifacts=_slim(artifacts), seconds=time.perf_counter() - t0,
                    worker=worker)


# ---- in this process ------------------------------------------------------------------------------------------------
class InlineExecutor:
    """Cases one after another in this process, with the driver's Engine."""

    name = "local"
    workers = 1

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def map(self, jobs: Iterable[CaseJob]) -> Iterator[CaseWork]:
        for job in jobs:
            yield analyse_case(self.engine, job)

    def close(self) -> None:
        pass


# ---- local worker processes -----------------------------------------------------------------------------------------
_WORKER_ENGINE: Any = None


def _settings_key(settings: Settings, planner: str) -> str:
    return planner + "|" + settings.model_dump_json()


def _engine_for(settings: Settings, planner: str) -> Any:
    """This process's Engine for (settings, planner), built on first use and kept for later cases."""
    global _WORKER_ENGINE
    key = _settings_key(settings, planner)
    if _WORKER_ENGINE is None or _WORKER_ENGINE[0] != key:
        threads = getattr(settings, "torch_threads", None)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        _WORKER_ENGINE = (key, Engine(settings, planner=planner))
    return _WORKER_ENGINE[1]


def _process_case(settings: Settings, planner: str, job: CaseJob) -> CaseWork:
    return analyse_case(_engine_for(settings, planner), job)


def _planner_name(planner: Any, settings: Settings) -> str:
    if planner is None:
        return str(settings.planner)
    if isinstance(planner, str):
        return planner
    name = getattr(planner, "name", None)
    if isinstance(name, str):
        return name  # a planner object is rebuilt by name in each worker
    raise ExecutorError("worker processes need a planner name (hybrid | rules | llamacpp | openai), not a planner object")


class ProcessExecutor:
    """Cases in ``workers`` local processes (``spawn``), at most ``workers`` at a time, results as they finish."""

    name = "local"

    def __init__(self, settings: Settings, planner: Any = None, workers: int = 2) -> None:
        if workers < 1:
            raise ExecutorError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.planner = _planner_name(planner, settings)
        if not getattr(settings, "torch_threads", None):  # split the cores between the workers
            settings = settings.model_copy(update={"torch_threads": max(1, (os.cpu_count() or 1) // workers)})
        self.settings = settings
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing

        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, jobs: Iterable[CaseJob]) -> Iterator[CaseWork]:
        from concurrent.futures.process import BrokenProcessPool

        pending: dict[Future, CaseJob] = {}
        queue = list(jobs)
        while queue or pending:
            while queue and len(pending) < self.workers:  # pending = running: a broken pool fails only those
                job = queue.pop(0)
                pending[self._pool.submit(_process_case, self.settings, self.planner, job)] = job
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                job = pending.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool as exc:
                    # a worker died (killed, out of memory, a crash in native code): which case caused it is
                    # unknown, so every case the pool held fails with the reason (a rerun retries them) and a new
                    # pool takes the cases not started yet
                    broken = True
                    yield CaseWork(job.case_id, "failed", f"worker process died: {exc}")
                except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result: that case fails alone
                    yield CaseWork(job.case_id, "failed", f"{type(exc).__name__}: {exc}")
            if broken:
                for job in pending.values():
                    yield CaseWork(job.case_id, "failed", "worker process died while this case was running")
                pending.clear()
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---- Ray -----------------------------------------------------------------------------------------------------------
def _ray_case(settings: Settings, planner: str, job: CaseJob) -> CaseWork:
    """Body of the Ray case task: tile batches of big images go out as tile tasks while the case runs."""
    engine = _engine_for(settings, planner)
    mapper = RayTileMapper(
        num_cpus=float(settings.ray_num_cpus_per_tile), min_batches=int(settings.ray_tile_min_batches)
    )
    with use_tile_mapper(mapper):
        work = analyse_case(engine, job)
    work.worker += f" tile_tasks={mapper.tasks}"
    return work


def _ray_tile(fn: Any, batch: list[Any]) -> Any:
    return fn(batch)


class RayTileMapper:
    """Maps a tiler's predict function over tile batches as Ray tasks (in order); small jobs stay in-process."""

    def __init__(self, num_cpus: float = 1.0, min_batches: int = 4, window: int | None = None) -> None:
        self.num_cpus = num_cpus
        self.min_batches = min_batches
        self.window = window
        self.tasks = 0

    def __call__(self, fn: Callable[[list[Any]], Any], batches: list[list[Any]]) -> Iterator[Any]:
        import ray

        if len(batches) < self.min_batches:
            yield from (fn(b) for b in batches)
            return
        remote = ray.remote(num_cpus=self.num_cpus, max_retries=1)(_ray_tile)
        fn_ref = ray.put(fn)  # the model goes to the object store once, not once per tile batch
        window = self.window or max(2, int(ray.cluster_resources().get("CPU", 2) * 2))
        refs: list[Any] = []
        nxt = 0
        for i in range(len(batches)):
            while nxt < len(batches) and nxt < i + window:
                refs.append(remote.remote(fn_ref, batches[nxt]))
                nxt += 1
                self.tasks += 1
            yield ray.get(refs[i])
            refs[i] = None  # release the result


def ray_env_defaults() -> None:
    """Environment a Ray start needs on an offline machine: no usage statistics."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class RayExecutor:
    """One Ray task per case on the cluster at ``address`` (None = start or join a local instance)."""

    name = "ray"

    def __init__(self, settings: Settings, planner: Any = None, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ExecutorError("the ray executor needs the 'ray' package (pip install 'ray==2.60.0')") from exc
        self.settings = settings
        self.planner = _planner_name(planner, settings)
        self.address = address if address is not None else getattr(settings, "ray_address", None)
        self._started = False
        if not ray.is_initialized():
            ray_env_defaults()
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = getattr(settings, "ray_local_cpus", None) or os.cpu_count() or 1
                kwargs["_node_ip_address"] = "127.0.0.1"
            try:
                ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001 - any start/connect failure is reported with the address
                where = self.address or "a local Ray instance"
                raise ExecutorError(f"cannot start or join {where}: {type(exc).__name__}: {exc}") from exc
            self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", 1) // max(settings.ray_num_cpus_per_case, 1e-6))
        opts: dict[str, Any] = {"num_cpus": float(settings.ray_num_cpus_per_case),
                                "max_retries": int(settings.ray_max_retries)}
        if settings.ray_memory_per_case_mb:
            opts["memory"] = int(settings.ray_memory_per_case_mb) * 1024 * 1024
        self._remote = ray.remote(**opts)(_ray_case)

    def map(self, jobs: Iterable[CaseJob]) -> Iterator[CaseWork]:
        import ray

        settings_ref = ray.put(self.settings)
        refs = {self._remote.remote(settings_ref, self.planner, job): job for job in jobs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                job = refs.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - worker crash, task error after retries, lost node
                    yield CaseWork(job.case_id, "failed", f"ray task failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()


def make_executor(
    kind: str, settings: Settings, engine: Any = None, planner: Any = None, workers: int = 1, address: str | None = None
) -> Any:
    """``local`` (inline when ``workers == 1``, else worker processes) or ``ray``."""
    key = (kind or "local").strip().lower()
    if workers < 1:
        raise ExecutorError(f"workers must be >= 1, got {workers}")
    if key == "local":
        if workers <= 1:
            if engine is None:
                        engine = Engine(settings, planner=planner)
            return InlineExecutor(engine)
        return ProcessExecutor(settings, planner=planner if planner is not None else engine and engine.planner,
                               workers=workers)
    if key == "ray":
        return RayExecutor(settings, planner=planner if planner is not None else engine and engine.planner,
                           address=address)
    raise ExecutorError(f"unknown executor {kind!r}; valid executors: local, ray")
