"""``audit run PROBE --ray ADDRESS``: one probe's shards spread over a Ray cluster.

One actor per GPU (``num_gpus=1``; CPU actors on a cluster without GPUs) runs ``run_probe`` for
one shard at a time into the same run directory, which must be on a filesystem every node and
the driver see (NFS, Lustre, ...). More shards than actors balance uneven shards: an actor that
finishes takes the next one.

Faults are Ray's to handle: an actor whose process dies (OOM killer, lost node) is restarted up
to ``max_restarts`` times and its running shard retried (``max_task_retries``). A retried shard
resumes from what the store already holds, so the run stays exact: one row per key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from audit.errors import AuditError, MissingDependencyError
from audit.run.runner import RunOptions, move_aside, run_probe_file
from audit.spec import load_probe
from audit.store.schema import Manifest
from audit.store.shard import Shard
from audit.store.shard_record import read_shard_records
from audit.store.tables import RunStore

INSTALL_HINT = "install with: pip install 'vlm-bias-audit[ray]'"
# Forwarded to the workers, so a driver's offline setting and caches hold on every node.
FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "TOKENIZERS_PARALLELISM",
)


@dataclass(frozen=True)
class RayPlan:
    """Where and how widely to spread a run."""

    address: str
    """``auto`` (a running cluster), ``local`` (start one on this machine), or an address
    (``HOST:6379`` from a cluster node, ``ray://HOST:10001`` through Ray Client)."""
    n_shards: int | None = None
    """Shards to split the run into (default: one per GPU, or per CPU without GPUs)."""
    max_restarts: int = 3
    """How often Ray restarts a dead actor and retries its shard."""
    report_every_s: float = 60.0
    """How often the driver reports the rows stored so far."""


@dataclass(frozen=True)
class ShardJob:
    """What every actor is asked to run, with paths made absolute by the driver."""

    probe_path: str
    options: RunOptions
    run_dir: Path


@dataclass(frozen=True)
class ShardOutcome:
    """What one shard's actor reported (``error`` set when it failed)."""

    shard: Shard
    status: str
    rows_written: int = 0
    errors_written: int = 0
    elapsed_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class RayRunResult:
    """The shards' outcomes and the run as the store holds it afterwards."""

    run_dir: Path
    outcomes: list[ShardOutcome]
    manifest: Manifest

    @property
    def failed(self) -> list[ShardOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    def describe(self) -> str:
        lines = [f"run: {self.run_dir}  status: {self.manifest.status.value}"]
        lines += self.manifest.stored_lines()
        for outcome in self.failed:
            lines.append(f"shard {outcome.shard.label} failed: {outcome.error}")
        if self.failed:
            lines.append("the rows stored are kept: run the same command again to resume")
        else:
            lines.append(f"next: audit analyze {self.run_dir}")
        return "\n".join(lines)


class ShardWorker:
    """The actor: runs one shard of a probe at a time (Ray restarts it if its process dies)."""

    def run_shard(self, probe_path: str, options: RunOptions) -> ShardOutcome:
        shard = options.shard or Shard(0, 1)
        try:
            result = run_probe_file(probe_path, options)
        except AuditError as error:  # a user error: retrying would fail the same way
            return ShardOutcome(shard, "failed", error=str(error))
        return ShardOutcome(
            shard, "done", result.rows_written, result.errors_written, result.elapsed_s
        )


def import_ray() -> Any:
    """The ``ray`` module, or a ``MissingDependencyError`` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--ray needs the Ray package; {INSTALL_HINT}") from None
    return ray


def run_on_ray(
    probe_path: str | Path,
    options: RunOptions,
    plan: RayPlan,
    report: Callable[[str], None] = print,
) -> RayRunResult:
    """Run every shard of the probe on the Ray cluster at ``plan.address``; wait for all."""
    ray = import_ray()
    if options.shard is not None:
        raise AuditError(
            "--ray splits the run into shards itself; it cannot also run shard "
            f"{options.shard.label} (drop --shard; do not start it under torchrun or a SLURM array)"
        )
    if plan.n_shards is not None and plan.n_shards < 1:
        raise AuditError(f"--ray-shards: expected a positive integer, got {plan.n_shards}")
    job = _job(Path(probe_path), options)
    if options.fresh:  # here, once, before any shard writes
        move_aside(RunStore(job.run_dir))
    started_here = _connect(ray, plan.address)
    try:
        return _run_shards(ray, job, plan, report)
    finally:
        if started_here:
            ray.shutdown()


def _job(probe_path: Path, options: RunOptions) -> ShardJob:
    """Paths as every node sees them: workers do not share the driver's working directory."""
    if not probe_path.is_file():
        raise AuditError(f"{probe_path}: no such probe file")
    spec = options.apply(load_probe(probe_path))  # also reports probe errors before Ray starts
    model = options.model
    if model and Path(model).exists():
        model = str(Path(model).resolve())
    run_dir = options.run_dir_for(spec).resolve()
    shared = replace(options, out=run_dir, model=model, progress=False, fresh=False, launcher="ray")
    return ShardJob(str(probe_path.resolve()), shared, run_dir)


def _connect(ray: Any, address: str) -> bool:
    """Connect (or reuse this process's connection); True when this call started Ray."""
    if ray.is_initialized():
        return False
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    runtime_env = {"env_vars": env} if env else None
    try:
        if address == "local":
            ray.init(runtime_env=runtime_env, include_dashboard=False)
        else:
            ray.init(address=address, runtime_env=runtime_env)
    except ConnectionError as error:
        raise AuditError(
            f"--ray {address}: no Ray cluster there ({error}); start one with 'ray start --head' "
            "on the head node, or pass --ray local to start one on this machine"
        ) from None
    return True


def _run_shards(
    ray: Any, job: ShardJob, plan: RayPlan, report: Callable[[str], None]
) -> RayRunResult:
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(int(resources.get("CPU", 1)), 1)
    slots = gpus or cpus
    n_shards = plan.n_shards or slots
    shards = [Shard(k, n_shards) for k in range(n_shards)]
    actor_class = ray.remote(ShardWorker).options(
        num_gpus=1 if gpus else 0,
        num_cpus=1,
        max_restarts=plan.max_restarts,
        max_task_retries=plan.max_restarts,
    )
    actors = [actor_class.remote() for _ in range(min(n_shards, slots))]
    kind = "GPU" if gpus else "CPU"
    report(f"ray: {n_shards} shards on {len(actors)} {kind} actors, into {job.run_dir}")
    try:
        outcomes = _dispatch(ray, actors, shards, job, plan, report)
    finally:
        for actor in actors:
            ray.kill(actor)
    return RayRunResult(job.run_dir, outcomes, RunStore.open(job.run_dir).manifest())


def _dispatch(
    ray: Any,
    actors: list[Any],
    shards: list[Shard],
    job: ShardJob,
    plan: RayPlan,
    report: Callable[[str], None],
) -> list[ShardOutcome]:
    """Give each idle actor the next shard until all are done; collect their outcomes."""
    waiting = list(reversed(shards))
    running: dict[Any, tuple[Any, Shard]] = {}
    outcomes: list[ShardOutcome] = []
    idle = list(actors)
    last_report = time.monotonic()
    while waiting or running:
        while idle and waiting:
            actor, shard = idle.pop(), waiting.pop()
            future = actor.run_shard.remote(job.probe_path, replace(job.options, shard=shard))
            running[future] = (actor, shard)
        if not running:  # every actor died for good: nothing can take the rest
            outcomes += [ShardOutcome(s, "not run", error="no live actor left") for s in waiting]
            break
        done, _ = ray.wait(list(running), num_returns=1, timeout=plan.report_every_s)
        for future in done:
            actor, shard = running.pop(future)
            outcome = _outcome(ray, future, shard)
            outcomes.append(outcome)
            report(_describe_outcome(outcome, len(outcomes), len(shards)))
            if outcome.status != "lost":
                idle.append(actor)
        if time.monotonic() - last_report >= plan.report_every_s:
            report(_describe_rows(job.run_dir))
            last_report = time.monotonic()
    return sorted(outcomes, key=lambda o: o.shard.index)


def _outcome(ray: Any, future: Any, shard: Shard) -> ShardOutcome:
    try:
        return ray.get(future)
    except ray.exceptions.RayActorError as error:
        return ShardOutcome(shard, "lost", error=f"its actor died for good ({_first_line(error)})")
    except ray.exceptions.RayTaskError as error:  # a bug: keep the traceback's last line
        return ShardOutcome(shard, "crashed", error=_last_line(error))


def _describe_outcome(outcome: ShardOutcome, n_done: int, n_total: int) -> str:
    head = f"ray: shard {outcome.shard.label} ({n_done}/{n_total})"
    if outcome.error is not None:
        return f"{head} {outcome.status}: {outcome.error}"
    return (
        f"{head} {outcome.status}: {outcome.rows_written} rows "
        f"({outcome.errors_written} errors) in {outcome.elapsed_s:.1f} s"
    )


def _describe_rows(run_dir: Path) -> str:
    records = read_shard_records(run_dir)
    written = sum(r.rows_written or 0 for r in records if r.status == "running")
    running = sum(r.status == "running" for r in records)
    return f"ray: {running} shards running, {written} rows written by them so far"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__
