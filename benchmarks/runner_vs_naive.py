"""Benchmark: the runner (`audit run`) against a naive loop, same model, inputs and outputs.

The naive loop is how the IDEFICS team's published scripts ran 80B: for each image and prompt,
the processor on one prompt, ``model.generate``, decode. The runner is ``run_probe``, the code
behind ``audit run``: images decoded by a prefetch thread, batches of ``--batch-size`` images,
prompts sorted by length, rows written to a run directory. Both run greedy with the same
decoding settings (stop tokens, banned image tokens) on a random-weight ``size="small"`` model
(hidden 256, 4 layers, 224 px images) over the same synthetic 224 px JPEGs read from parquet,
and every stored generation must equal the naive loop's, text and token count.

Repetitions alternate which of the two goes first, so drift on a shared machine hits both; the
ratio is taken per repetition, then its median. The runner's time is its whole ``run_probe``
call (model load, manifest and parquet writes included); the naive loop's model is loaded
before its clock starts. Target: runner >= 4x the naive loop's generations/s on CPU.

    .venv/bin/python -m benchmarks.runner_vs_naive [--families idefics,idefics2,idefics3]
        [--images 24] [--max-new-tokens 32] [--repeats 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CARD_PROMPTS,
    limit_threads,
    print_header,
    quiet_progress_bars,
    set_offline_env,
    write_probe,
)

TARGET_RATIO = 4.0
Key = tuple[str, str]
Output = tuple[str, int]


@dataclass(frozen=True)
class Setup:
    """What one benchmark run measures."""

    families: tuple[str, ...]
    size: str
    n_images: int
    image_px: int
    max_new_tokens: int
    batch_size: int
    repeats: int
    n_threads: int
    work_dir: Path


class NaiveLoop:
    """One image and one prompt at a time: processor, ``generate``, decode."""

    def __init__(self, model_dir: Path, max_new_tokens: int) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from audit.backends.base import GenerationSettings
        from audit.backends.generation import generation_config, token_roles

        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype=torch.float32
        ).eval()
        self.model_type = self.model.config.model_type
        # The same decoding settings as the runner: the loop differs, not the decoding.
        roles = token_roles(self.processor, self.model)
        self.config = generation_config(GenerationSettings(max_new_tokens=max_new_tokens), roles)

    def encode(self, image: Any, prompt: str) -> Any:
        if self.model_type == "idefics":
            parts = ["User:", image, f"{prompt}<end_of_utterance>", "\nAssistant:"]
            return self.processor(
                text=[parts], add_end_of_utterance_token=False, return_tensors="pt"
            )
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        bos = self.processor.tokenizer.bos_token
        return self.processor(
            text=[text],
            images=[[image]],
            add_special_tokens=not (bos and text.startswith(bos)),  # Idefics3 writes its own
            return_tensors="pt",
        )

    def generate(self, image: Any, prompt: str) -> Output:
        import torch

        inputs = self.encode(image, prompt)
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=self.config)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        text = self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return text, len(new_tokens)

    def run(self, samples: Iterable[Any], prompts: dict[str, str]) -> dict[Key, Output]:
        outputs: dict[Key, Output] = {}
        for sample in samples:
            image = sample.load_image().convert("RGB")
            for prompt_id, prompt in prompts.items():
                outputs[(sample.sample_id, prompt_id)] = self.generate(image, prompt)
        return outputs


def prepare_probe(setup: Setup, family: str) -> Path:
    """A small model of ``family``, synthetic JPEGs in parquet, and a probe over both."""
    from audit.datasets.synthetic import write_synthetic_parquet
    from audit.tiny_models import build_tiny_model

    model_dir = setup.work_dir / "models" / f"{family}-{setup.size}"
    build_tiny_model(family, model_dir, size=setup.size)  # type: ignore[arg-type]
    faces = setup.work_dir / f"faces-{setup.n_images}-{setup.image_px}px.parquet"
    if not faces.exists():
        write_synthetic_parquet(faces, setup.n_images, size=setup.image_px)
    return write_probe(
        setup.work_dir / f"probe-{family}.yaml",
        {
            "name": f"runner-vs-naive-{family}",
            "dataset": {"source": "parquet", "path": str(faces), "groups": ["gender", "race"]},
            "model": {"id": str(model_dir), "device": "cpu"},
            "generation": {
                "max_new_tokens": setup.max_new_tokens,
                "batch_size": setup.batch_size,
            },
            "prompts": [{"id": k, "text": v} for k, v in CARD_PROMPTS.items()],
        },
    )


def run_runner(
    spec: Any, run_dir: Path, limit: int | None = None
) -> tuple[float, dict[Key, Output]]:
    """Seconds of one whole ``run_probe`` call, and what it stored."""
    from audit.runner import RunOptions, run_probe
    from audit.store import RunStore

    options = RunOptions(out=run_dir, fresh=True, progress=False, limit=limit)
    started = time.perf_counter()
    result = run_probe(spec, options)
    elapsed = time.perf_counter() - started
    if result.status != "complete":
        raise RuntimeError(f"runner ended with status {result.status} in {run_dir}")
    rows = RunStore(run_dir).read("generations")
    stored = {
        (r.sample_id, r.prompt_id): (r.generation, int(r.n_new_tokens))
        for r in rows.itertuples(index=False)
    }
    return elapsed, stored


def run_naive(
    naive: NaiveLoop, spec: Any, limit: int | None = None
) -> tuple[float, dict[Key, Output]]:
    from audit.datasets import open_dataset

    samples = list(open_dataset(spec).samples())[:limit]  # ids and lazy loaders, no pixels yet
    prompts = {p.id: p.text for p in spec.prompts}
    started = time.perf_counter()
    outputs = naive.run(samples, prompts)
    return time.perf_counter() - started, outputs


def count_identical(runner: dict[Key, Output], naive: dict[Key, Output]) -> tuple[int, list[Key]]:
    """Keys whose text and token count agree, and the keys that differ or are missing."""
    keys = sorted(set(runner) | set(naive))
    differing = [k for k in keys if runner.get(k) != naive.get(k)]
    return len(keys) - len(differing), differing


@dataclass(frozen=True)
class FamilyResult:
    family: str
    n_generations: int
    runner_s: tuple[float, ...]
    naive_s: tuple[float, ...]
    n_identical: int
    differing: tuple[Key, ...]

    @property
    def ratios(self) -> list[float]:
        return [n / r for r, n in zip(self.runner_s, self.naive_s, strict=True)]

    def rate(self, seconds: Sequence[float]) -> float:
        return self.n_generations / statistics.median(seconds)


def measure_family(setup: Setup, family: str) -> FamilyResult:
    from audit.spec import load_probe

    spec = load_probe(prepare_probe(setup, family))
    naive = NaiveLoop(Path(spec.model.id), setup.max_new_tokens)
    run_dir = setup.work_dir / "runs" / family
    # Warm-up (not timed): first calls pay for lazy imports and kernel selection.
    run_runner(spec, run_dir, limit=2)
    run_naive(naive, spec, limit=2)
    runner_s, naive_s = [], []
    runner_out: dict[Key, Output] = {}
    naive_out: dict[Key, Output] = {}
    for rep in range(setup.repeats):
        order = ("runner", "naive") if rep % 2 == 0 else ("naive", "runner")
        for which in order:
            if which == "runner":
                seconds, runner_out = run_runner(spec, run_dir)
                runner_s.append(seconds)
            else:
                seconds, naive_out = run_naive(naive, spec)
                naive_s.append(seconds)
        print(
            f"  rep {rep + 1}: runner {runner_s[-1]:6.1f} s | naive {naive_s[-1]:6.1f} s | "
            f"ratio {naive_s[-1] / runner_s[-1]:.2f}x",
            flush=True,
        )
    identical, differing = count_identical(runner_out, naive_out)
    return FamilyResult(
        family, len(naive_out), tuple(runner_s), tuple(naive_s), identical, tuple(differing)
    )


def describe(result: FamilyResult) -> str:
    ratios = result.ratios
    met = "met" if statistics.median(ratios) >= TARGET_RATIO else "NOT met"
    lines = [
        f"  runner {result.rate(result.runner_s):.2f} gen/s, naive "
        f"{result.rate(result.naive_s):.2f} gen/s, ratio median {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}) [target >= {TARGET_RATIO:g}x: {met}]",
        f"  outputs: {result.n_identical}/{result.n_identical + len(result.differing)} identical "
        "(text and token count)",
    ]
    if result.differing:
        lines.append(f"  first differing keys: {list(result.differing[:3])}")
    return "\n".join(lines)


def parse_setup(argv: Sequence[str] | None) -> Setup:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="idefics,idefics2,idefics3")
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--images", type=int, default=24, help="images (x 3 prompts)")
    parser.add_argument("--image-px", type=int, default=224, help="side of the synthetic JPEGs")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--work-dir", type=Path, default=None, help="models, data, runs")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, 3 images, 1 repeat (a smoke run)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.images, args.image_px, args.max_new_tokens = "tiny", 3, 32, 4
        args.batch_size, args.repeats = 2, 1
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="runner-vs-naive-"))
    return Setup(
        families=tuple(f.strip() for f in args.families.split(",") if f.strip()),
        size=args.size,
        n_images=args.images,
        image_px=args.image_px,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        repeats=args.repeats,
        n_threads=args.threads,
        work_dir=work_dir.resolve(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any output differed between runner and naive loop."""
    setup = parse_setup(argv)
    set_offline_env(setup.work_dir)
    limit_threads(setup.n_threads)
    quiet_progress_bars()
    print_header("runner vs naive loop: samples/s, same model, inputs and outputs", setup.n_threads)
    print(
        f"  {setup.n_images} images ({setup.image_px} px JPEG) x {len(CARD_PROMPTS)} prompts, "
        f"size={setup.size}, greedy, max_new_tokens {setup.max_new_tokens}, "
        f"batch {setup.batch_size}, {setup.repeats} alternating repeats; work dir {setup.work_dir}"
    )
    results = []
    for family in setup.families:
        print(f"{family}:", flush=True)
        result = measure_family(setup, family)
        print(describe(result), flush=True)
        results.append(result)
    ratios = ", ".join(f"{r.family} {statistics.median(r.ratios):.2f}x" for r in results)
    print(f"summary (runner / naive, median): {ratios}")
    return 1 if any(r.differing for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
