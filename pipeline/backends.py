"""Where shard jobs run: this process, local worker processes (joblib), or a Dask cluster.

The shard is the unit of work and its bytes depend on nothing but its inputs, so every
backend writes the same files.  Workers write tars and records straight into the output
folder (on a cluster: a folder every worker sees under the same path); only the process
that called :func:`pipeline.build.build` writes ``plan.json`` and the manifest.

Dask runs through joblib's dask backend: ``--backend dask --scheduler tcp://HOST:8786``
connects a ``distributed.Client`` to a running scheduler; its workers must be able to
import this package (same environment) and read the source folder.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable

from joblib import Parallel, delayed

from .shards import ShardJob, run_shard
from .signals import Orphaned, orphan_guard

BACKENDS = ("local", "dask")
INSTALL_HINT = "pip install -e .[cluster]"


class BackendError(RuntimeError):
    """A backend that cannot run (missing package, unreachable scheduler); one line."""


def _one_thread_per_worker() -> None:
    # x265, OpenJPEG and numpy must not start their own thread pools inside each worker
    # process: one core per worker is the plan.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def _run(job: ShardJob, parent: int | None = None) -> tuple[int, dict]:
    """One shard in a worker process; ``parent``: the pid of the build that started the worker
    (a local worker stops, committing nothing, between two images once that process is gone)."""
    _one_thread_per_worker()
    try:
        return job.index, run_shard(job, on_item=orphan_guard(parent))
    except Orphaned:
        os._exit(70)


def check_backend(backend: str, scheduler: str | None = None) -> None:
    """Fail before any work when the backend cannot run (one-line BackendError)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise BackendError(f"--backend dask needs Dask's distributed scheduler, which is not installed: "
                               f"{INSTALL_HINT}") from None
        if not scheduler:
            raise BackendError("--backend dask needs --scheduler ADDRESS (e.g. tcp://HOST:8786), "
                               "the address `dask scheduler` prints")
    elif scheduler:
        raise BackendError("--scheduler is for --backend dask")


@contextlib.contextmanager
def dask_client(scheduler: str | None):
    """A ``distributed.Client`` connected to ``scheduler`` (closed afterwards)."""
    check_backend("dask", scheduler)
    import distributed
    try:
        client = distributed.Client(scheduler, timeout="20s", set_as_default=True)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BackendError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


#: what joblib and Dask raise when a worker process died (killed, out of memory) too often
_WORKER_DIED = ("TerminatedWorkerError", "KilledWorker")


def run_jobs(jobs: list[ShardJob], backend: str = "local", n_jobs: int = 1, scheduler: str | None = None,
             on_item: Callable[[], None] | None = None) -> Iterable[tuple[int, dict]]:
    """Yield (shard index, records by setting) as shards finish, in any order."""
    try:
        yield from _run_jobs(jobs, backend, n_jobs, scheduler, on_item)
    except Exception as exc:
        if type(exc).__name__ in _WORKER_DIED:
            raise BackendError(f"a worker process died ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                               "complete shards are kept: run the same command again to finish") from None
        raise


def _run_jobs(jobs, backend, n_jobs, scheduler, on_item):
    check_backend(backend, scheduler)
    if backend == "dask":
        with dask_client(scheduler):
            from joblib import parallel_config
            with parallel_config(backend="dask"):
                yield from Parallel(n_jobs=-1, return_as="generator_unordered")(delayed(_run)(j) for j in jobs)
        return
    if n_jobs == 1 or len(jobs) <= 1:
        for job in jobs:
            yield job.index, run_shard(job, on_item=on_item)
        return
    # joblib starts every worker up front: never more of them than there are shards to make
    n_jobs = min(n_jobs, len(jobs))
    yield from Parallel(n_jobs=n_jobs, return_as="generator_unordered")(delayed(_run)(j, os.getpid()) for j in jobs)
