"""Benchmark: a model behind an OpenAI-compatible server against the same model in-process.

Two ways to run the same probe, timed side by side in each repetition:

- **in-process**: ``run_probe`` with the model loaded by the runner (``backend: chat``, fast
  paths on, batches of ``--batch-size`` images): what ``audit run`` does on a local model;
- **endpoint**: ``run_probe`` with ``backend: endpoint`` against ``transformers serve`` running
  the same model folder on 127.0.0.1, ``--concurrency`` requests in flight: each generation is
  one chat completion with the image as a base64 PNG data URL.

Same random-weight Idefics3 model (``--size``), same synthetic JPEGs read from parquet, the
IDEFICS card's three prompts, greedy, ``--max-new-tokens``; generation only (classification over
an endpoint uses another method when the server returns no prompt log-probs, so it is not
comparable). Both sides use ``--threads`` torch threads (the server in its own process). Each
side's time is its whole ``run_probe`` call (manifest, parquet writes and, for the endpoint, the
server check included); the in-process side loads its model inside that call, the server loaded
it before the clock. Repetitions rotate which side goes first; the ratio (endpoint generations/s
over in-process) is taken per repetition and its median reported, so it holds on a shared
machine. What it measures is the protocol's cost on one machine (HTTP, JSON, PNG encoding and
decoding, one ``generate`` per request in ``transformers serve``): an engine with continuous
batching on a GPU node (vLLM, SGLang) is another matter. The outputs are compared too (reported,
not required to agree: the server decodes with the model's own generation config, without the
in-process backend's banned image tokens and stop list).

    .venv/bin/python -m benchmarks.endpoint_vs_inprocess [--size small] [--images 12]
        [--max-new-tokens 16] [--concurrency 8] [--batch-size 16] [--repeats 3] [--threads 1]
        [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CARD_PROMPTS,
    add_run_arguments,
    apply_quick,
    limit_threads,
    print_header,
    quiet_progress_bars,
    set_offline_env,
    transformers_serve,
    write_probe,
)

SIDES = ("in_process", "endpoint")
LABELS = {"in_process": "in-process runner", "endpoint": "endpoint backend"}


@dataclass(frozen=True)
class Setup:
    size: str
    n_images: int
    image_px: int
    max_new_tokens: int
    batch_size: int
    concurrency: int
    repeats: int
    n_threads: int
    work_dir: Path


def prepare_probe(setup: Setup) -> tuple[Path, Path]:
    """The model folder, and a generation-only probe over synthetic JPEGs in parquet."""
    from audit.datasets.synthetic import write_synthetic_parquet
    from audit.demo.tiny_models import build_tiny_model

    model_dir = setup.work_dir / "models" / f"idefics3-{setup.size}"
    build_tiny_model("idefics3", model_dir, size=setup.size)  # type: ignore[arg-type]
    faces = setup.work_dir / f"faces-{setup.n_images}-{setup.image_px}px.parquet"
    if not faces.exists():
        write_synthetic_parquet(faces, setup.n_images, size=setup.image_px)
    probe = write_probe(
        setup.work_dir / "probe.yaml",
        {
            "name": "endpoint-vs-inprocess",
            "dataset": {"source": "parquet", "path": str(faces), "groups": ["gender", "race"]},
            "model": {"id": str(model_dir), "device": "cpu"},
            "generation": {
                "max_new_tokens": setup.max_new_tokens,
                "batch_size": setup.batch_size,
            },
            "prompts": [{"id": k, "text": v} for k, v in CARD_PROMPTS.items()],
        },
    )
    return model_dir, probe


def run_side(probe: Path, run_dir: Path, endpoint: str | None, setup: Setup) -> tuple[float, Any]:
    """Seconds of one whole ``run_probe`` call, and the generations it stored."""
    from audit.run.runner import RunOptions, run_probe_file
    from audit.store.tables import RunStore

    options = RunOptions(
        out=run_dir,
        fresh=True,
        progress=False,
        endpoint=endpoint,
        concurrency=setup.concurrency if endpoint else None,
    )
    started = time.perf_counter()
    result = run_probe_file(probe, options)
    elapsed = time.perf_counter() - started
    if result.status != "complete" or result.errors_written:
        raise RuntimeError(f"{run_dir}: status {result.status}, {result.errors_written} errors")
    rows = RunStore(run_dir).read("generations")
    return elapsed, dict(
        zip(zip(rows.sample_id, rows.prompt_id, strict=True), rows.generation, strict=True)
    )


def measure(setup: Setup) -> dict[str, Any]:
    model_dir, probe = prepare_probe(setup)
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    outputs: dict[str, Any] = {}
    serve_log = setup.work_dir / "serve.log"
    with transformers_serve(model_dir, serve_log, n_threads=setup.n_threads) as (address, _):
        url = f"{address}/v1"
        for repeat in range(setup.repeats):
            order = SIDES if repeat % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                endpoint = url if side == "endpoint" else None
                run_dir = setup.work_dir / "runs" / side
                elapsed, outputs[side] = run_side(probe, run_dir, endpoint, setup)
                times[side].append(elapsed)
                print(f"  repeat {repeat + 1}: {LABELS[side]} {elapsed:.2f} s", flush=True)
    n = len(outputs["in_process"])
    same = sum(outputs["endpoint"].get(key) == text for key, text in outputs["in_process"].items())
    ratios = [i / e for i, e in zip(times["in_process"], times["endpoint"], strict=True)]
    return {"n": n, "times": times, "ratios": ratios, "same": same}


def describe(setup: Setup, result: dict[str, Any]) -> str:
    n, times = result["n"], result["times"]
    lines = [
        f"  {LABELS[side]}: {n / statistics.median(times[side]):.1f} generations/s "
        f"(median of {len(times[side])}: {statistics.median(times[side]):.2f} s)"
        for side in SIDES
    ]
    ratios = result["ratios"]
    lines.append(
        f"  endpoint over in-process, generations/s: median {statistics.median(ratios):.2f}x "
        f"(per repeat: {', '.join(f'{r:.2f}x' for r in ratios)}); concurrency "
        f"{setup.concurrency}, batch {setup.batch_size} images"
    )
    lines.append(f"  outputs equal on both sides: {result['same']} of {n}")
    return "\n".join(lines)


def parse_setup(argv: Sequence[str] | None) -> Setup:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, images=12, max_new_tokens=16, batch_size=16)
    parser.add_argument("--concurrency", type=int, default=8, help="endpoint requests in flight")
    args = parser.parse_args(argv)
    apply_quick(args)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="endpoint-vs-inprocess-"))
    return Setup(
        size=args.size,
        n_images=args.images,
        image_px=args.image_px,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        repeats=args.repeats,
        n_threads=args.threads,
        work_dir=work_dir.resolve(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    setup = parse_setup(argv)
    set_offline_env(setup.work_dir)
    limit_threads(setup.n_threads)
    quiet_progress_bars()
    print_header(
        "endpoint backend (transformers serve) vs in-process runner: generations/s, same model",
        setup.n_threads,
    )
    print(
        f"  {setup.n_images} images ({setup.image_px} px JPEG) x {len(CARD_PROMPTS)} prompts, "
        f"Idefics3 size={setup.size}, greedy, max_new_tokens {setup.max_new_tokens}, "
        f"{setup.repeats} alternating repeats; work dir {setup.work_dir}",
        flush=True,
    )
    result = measure(setup)
    print(describe(setup, result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
