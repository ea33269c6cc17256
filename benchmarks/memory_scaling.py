"""Benchmark: peak memory of `audit run` over 100,000 images against a 1,000-image run.

Each run is ``audit run`` in a fresh process on synthetic images (the in-code source, 64 px,
``--limit`` not used) with a tiny random-weight model, one prompt, ``max_new_tokens`` 1, batch 64
and no classification, so the run measures the pipeline (images, batches, parts, manifest,
compaction) rather than the model. The peak resident set size is the kernel's (``wait4``'s
``ru_maxrss``, the figure ``VmHWM`` shows); while a run works its ``VmRSS`` is sampled along
with the rows it has stored (its shard record), so growth with the dataset shows as a slope and
the end of the run (counting and compacting the parts) shows apart from the generation loop.
Last, the largest run is started again on its finished directory: a resume that reads every
stored key and finds nothing left to do.

Target: peak(100,000 images) <= 1.5x peak(1,000 images).

    .venv/bin/python -m benchmarks.memory_scaling [--images 1000,100000] [--family idefics2]
        [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_header, set_offline_env, write_probe

TARGET_RATIO = 1.5
SAMPLE_EVERY_S = 0.5
PROMPT = "Describe this person's appearance."


@dataclass(frozen=True)
class Setup:
    """What one benchmark run measures."""

    sizes: tuple[int, ...]
    family: str
    max_new_tokens: int
    batch_size: int
    n_threads: int
    work_dir: Path
    resume: bool


@dataclass(frozen=True)
class RssSample:
    """The child's resident memory at one moment, and how many rows it had stored by then."""

    elapsed_s: float
    rss_mib: float
    rows_written: int


@dataclass(frozen=True)
class RunMemory:
    """One ``audit run`` process: its peak, its samples, how long it took."""

    n_images: int
    peak_mib: float
    wall_s: float
    samples: tuple[RssSample, ...]

    def rss_at_fraction(self, fraction: float) -> float | None:
        """RSS once ``fraction`` of the rows were stored, before the last flush (None when the
        run flushed too few times to tell)."""
        for sample in self.samples:
            if fraction * self.n_images <= sample.rows_written < self.n_images:
                return sample.rss_mib
        return None

    def peak_while_generating_mib(self) -> float:
        """Highest sampled RSS before every row was stored (the end's counting excluded)."""
        during = [s.rss_mib for s in self.samples if s.rows_written < self.n_images]
        return max(during, default=float("nan"))


def audit_command() -> list[str]:
    """``audit`` from this interpreter's environment."""
    script = Path(sys.executable).with_name("audit")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "audit.cli"]


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process has just ended
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def rows_written(run_dir: Path) -> int:
    """Rows the run's process reported stored at its last flush (0 before the first)."""
    total = 0
    for record in (run_dir / "shards").glob("*.json"):
        try:
            total += int(json.loads(record.read_text()).get("rows_written") or 0)
        except (OSError, ValueError):  # being replaced right now: the next sample reads it
            continue
    return total


def measure_run(probe: Path, run_dir: Path, n_images: int, *, fresh: bool = True) -> RunMemory:
    """Run ``audit run`` in a new process; its peak RSS and its RSS sampled over its rows."""
    command = [*audit_command(), "run", str(probe), "--out", str(run_dir), "--no-progress"]
    command += ["--fresh"] if fresh else []
    log = run_dir.parent / f"{run_dir.name}{'' if fresh else '-resume'}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    samples = []
    started = time.perf_counter()
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        while True:
            # wait4 gives this child's own rusage (ru_maxrss: its peak RSS, KiB on Linux).
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            rss = rss_mib(process.pid)
            if rss is not None:
                samples.append(RssSample(time.perf_counter() - started, rss, rows_written(run_dir)))
            time.sleep(SAMPLE_EVERY_S)
    wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"audit run failed with status {process.returncode}:\n{tail}")
    return RunMemory(n_images, usage.ru_maxrss / 1024, wall_s, tuple(samples))


def check_stored(run_dir: Path, n_images: int) -> str:
    """The run is complete with one row per image, in one compacted part per table."""
    from audit.store.tables import RunStore

    store = RunStore.open(run_dir)
    status = store.manifest().status.value
    rows = store.count("generations")
    parts = {t: len(store.parts(t)) for t in ("generations", "thumbnails")}
    if status != "complete" or rows != n_images or store.count("thumbnails") != n_images:
        raise RuntimeError(f"{run_dir}: status {status}, {rows} of {n_images} generations stored")
    return f"{rows:,} rows, parts after compaction {parts}"


def write_memory_probe(setup: Setup, model_dir: Path, n_images: int) -> Path:
    return write_probe(
        setup.work_dir / f"probe-{n_images}.yaml",
        {
            "name": f"memory-{n_images}",
            "dataset": {"source": "synthetic", "n": n_images, "groups": ["gender", "race"]},
            "model": {"id": str(model_dir), "device": "cpu"},
            "generation": {"max_new_tokens": setup.max_new_tokens, "batch_size": setup.batch_size},
            "prompts": [{"id": "describe", "text": PROMPT}],
        },
    )


def describe(run: RunMemory, label: str) -> str:
    growth = [run.rss_at_fraction(f) for f in (0.1, 0.5, 0.9)]
    shown = " / ".join("-" if g is None else f"{g:.0f}" for g in growth)
    return (
        f"  {run.n_images:>7,} images{label}: peak {run.peak_mib:6.1f} MiB, {run.wall_s:6.1f} s "
        f"wall; RSS at 10/50/90 % of rows {shown} MiB, highest before the last flush "
        f"{run.peak_while_generating_mib():.0f} MiB"
    )


def parse_setup(argv: Sequence[str] | None) -> Setup:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="1000,100000", help="run sizes, comma-separated")
    parser.add_argument("--family", default="idefics2", choices=["idefics", "idefics2", "idefics3"])
    parser.add_argument("--max-new-tokens", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--work-dir", type=Path, default=None, help="model, probes, runs")
    parser.add_argument("--no-resume", action="store_true", help="skip the resume measurement")
    parser.add_argument(
        "--quick", action="store_true", help="50 vs 200 images, no resume (a smoke run)"
    )
    args = parser.parse_args(argv)
    sizes = (50, 200) if args.quick else tuple(int(x) for x in args.images.split(","))
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="memory-scaling-"))
    return Setup(
        sizes=tuple(sorted(sizes)),
        family=args.family,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        n_threads=args.threads,
        work_dir=work_dir.resolve(),
        resume=not (args.no_resume or args.quick),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run each size in a new process; print peaks and the largest-to-smallest ratio."""
    setup = parse_setup(argv)
    set_offline_env(setup.work_dir)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(setup.n_threads)
    from audit.demo.tiny_models import build_tiny_model

    print_header("memory of `audit run` against the number of images", setup.n_threads)
    model_dir = build_tiny_model(setup.family, setup.work_dir / "models" / setup.family)  # type: ignore[arg-type]
    print(
        f"  tiny {setup.family} model, synthetic 64 px images, 1 prompt, max_new_tokens "
        f"{setup.max_new_tokens}, batch {setup.batch_size}, no classification, --limit not used, "
        f"parts flushed every 512 rows; work dir {setup.work_dir}",
        flush=True,
    )
    runs = []
    for n_images in setup.sizes:
        probe = write_memory_probe(setup, model_dir, n_images)
        run_dir = setup.work_dir / "runs" / str(n_images)
        runs.append(measure_run(probe, run_dir, n_images))
        print(describe(runs[-1], ""), flush=True)
        print(f"    stored: {check_stored(run_dir, n_images)}", flush=True)
    ratio = runs[-1].peak_mib / runs[0].peak_mib
    met = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"peak ratio {runs[-1].n_images:,} / {runs[0].n_images:,} images: {ratio:.2f}x "
        f"[target <= {TARGET_RATIO:g}x: {met}]",
        flush=True,
    )
    if setup.resume:
        largest = setup.sizes[-1]
        probe = setup.work_dir / f"probe-{largest}.yaml"
        resume = measure_run(probe, setup.work_dir / "runs" / str(largest), largest, fresh=False)
        print(describe(resume, " (resume of the finished run, nothing to do)"))
        print(f"resume / smallest run: {resume.peak_mib / runs[0].peak_mib:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
