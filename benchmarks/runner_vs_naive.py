"""Benchmark: the runner (`audit run`) against the loops it replaces, same model, inputs, outputs.

Four ways to generate the same greedy outputs, timed side by side:

- **naive loop**: how the IDEFICS team's published scripts ran 80B: for each image and
  prompt, the processor on one prompt, ``model.generate``, decode;
- **card's batched generate**: how they ran 9B: one plain ``generate`` over all images x
  prompts (48 sequences for 16 images) in dataset order, left padded, no sorting, no sharing;
- **runner**: ``run_probe``, the code behind ``audit run``: images decoded by a prefetch thread,
  batches of ``--batch-size`` images, prompts sorted by length, fast paths on (each checked
  against the plain path on the first batch), rows written to a run directory;
- **runner without fast paths**: the same with ``--no-fast-paths`` (what the fast paths buy).

All decode greedily with the same settings (stop tokens, banned image tokens) on a random-weight
``size="small"`` model (hidden 256, 4 layers, 224 px images) over the same synthetic 224 px JPEGs
read from parquet. Every output must agree with the naive loop's: the same text and token count,
or the same up to a near-tie, where the plain path's two most likely tokens are within
``self_check.TIE_TOLERANCE["float32"]`` nats (batching changes float arithmetic, which may
break such a tie either way); the script reports each difference and exits 1 on any other.

Repetitions rotate which side goes first, so drift on a shared machine hits all; each ratio is
taken per repetition, then its median. The runner's time is its whole ``run_probe`` call
(model load, self-check, manifest and parquet writes included); the loops' model is loaded
before their clock starts. Target: runner >= 4x the naive loop's generations/s on CPU.

    .venv/bin/python -m benchmarks.runner_vs_naive [--families idefics,idefics2,idefics3,gemma3]
        [--images 24] [--max-new-tokens 32] [--repeats 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import math
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
    add_run_arguments,
    apply_quick,
    limit_threads,
    print_header,
    quiet_progress_bars,
    set_offline_env,
    write_probe,
)

TARGET_RATIO = 4.0
Key = tuple[str, str]
#: The sides timed, in the order of the first repetition.
SIDES = ("runner", "runner_plain", "card", "naive")
LABELS = {
    "runner": "runner",
    "runner_plain": "runner without fast paths",
    "card": "card's batched generate",
    "naive": "naive loop",
}


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


@dataclass(frozen=True)
class Output:
    """One generation as a side produced it (token ids where the side has them)."""

    text: str
    n_tokens: int
    token_ids: tuple[int, ...] = ()


class Loops:
    """The published scripts' two ways: one sequence per ``generate`` (naive), or every
    sequence of the run in one plain ``generate`` (the card's 9B setting)."""

    def __init__(self, model_dir: Path, max_new_tokens: int) -> None:
        from audit.backends import load_backend
        from audit.backends.base import GenerationSettings
        from audit.backends.hf.generation import generation_config
        from audit.spec import ModelSpec

        # The model, processor and token roles (stop tokens, the image tokens it may never
        # emit) exactly as a run loads them: the loop differs, not the decoding.
        backend = load_backend(str(model_dir), ModelSpec(id=str(model_dir), dtype="float32"))
        backend.load()
        self.processor = backend.processor  # type: ignore[attr-defined]
        self.model = backend.model  # type: ignore[attr-defined]
        self.model_type = self.model.config.model_type
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens)
        self.roles = backend.roles  # type: ignore[attr-defined]
        self.config = generation_config(self.settings, self.roles)

    def encode(self, pairs: Sequence[tuple[Any, str]]) -> Any:
        """The processor on (image, prompt) pairs, left padded (a batch's rows must end where
        their answers start)."""
        padding = {"padding": "longest", "padding_side": "left", "return_tensors": "pt"}
        if self.model_type == "idefics":
            parts = [
                ["User:", image, f"{prompt}<end_of_utterance>", "\nAssistant:"]
                for image, prompt in pairs
            ]
            return self.processor(text=parts, add_end_of_utterance_token=False, **padding)
        texts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                add_generation_prompt=True,
            )
            for _, p in pairs
        ]
        bos = self.processor.tokenizer.bos_token
        return self.processor(
            text=texts,
            images=[[image] for image, _ in pairs],
            add_special_tokens=not (bos and texts[0].startswith(bos)),  # Idefics3 writes its own
            **padding,
        )

    def generate(self, pairs: Sequence[tuple[Any, str]]) -> list[Output]:
        import torch

        from audit.backends.hf.generation import describe_new_tokens

        inputs = self.encode(pairs)
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=self.config)
        outputs = []
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            g = describe_new_tokens(row, self.processor.tokenizer, self.roles, ())
            outputs.append(Output(g.text, g.n_new_tokens, g.token_ids))
        return outputs

    def run(
        self, samples: Iterable[Any], prompts: dict[str, str], *, batched: bool
    ) -> dict[Key, Output]:
        keys, pairs = [], []
        for sample in samples:
            image = sample.load_image().convert("RGB")
            for prompt_id, prompt in prompts.items():
                keys.append((sample.sample_id, prompt_id))
                pairs.append((image, prompt))
        if batched:
            return dict(zip(keys, self.generate(pairs), strict=True))
        return {key: self.generate([pair])[0] for key, pair in zip(keys, pairs, strict=True)}


def prepare_probe(setup: Setup, family: str) -> Path:
    """A small model of ``family``, synthetic JPEGs in parquet, and a probe over both."""
    from audit.datasets.synthetic import write_synthetic_parquet
    from audit.demo.tiny_models import FAMILIES, build_tiny_model

    model_dir = setup.work_dir / "models" / f"{family}-{setup.size}"
    if family in FAMILIES:
        build_tiny_model(family, model_dir, size=setup.size)  # type: ignore[arg-type]
    else:  # another family: the conformance matrix's builder (tests/zoo)
        from tests.zoo.build import build_tiny_vlm

        build_tiny_vlm(family, model_dir, size=setup.size)
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
    spec: Any, run_dir: Path, *, fast_paths: bool = True, limit: int | None = None
) -> tuple[float, dict[Key, Output]]:
    """Seconds of one whole ``run_probe`` call, and what it stored."""
    from audit.run.runner import RunOptions, run_probe
    from audit.store.tables import RunStore

    options = RunOptions(
        out=run_dir, fresh=True, progress=False, limit=limit, fast_paths=fast_paths
    )
    started = time.perf_counter()
    result = run_probe(spec, options)
    elapsed = time.perf_counter() - started
    if result.status != "complete":
        raise RuntimeError(f"runner ended with status {result.status} in {run_dir}")
    rows = RunStore(run_dir).read("generations")
    stored = {
        (r.sample_id, r.prompt_id): Output(r.generation, int(r.n_new_tokens))
        for r in rows.itertuples(index=False)
    }
    return elapsed, stored


def run_loop(
    loops: Loops, spec: Any, *, batched: bool, limit: int | None = None
) -> tuple[float, dict[Key, Output]]:
    from audit.datasets import open_dataset

    samples = list(open_dataset(spec).samples())[:limit]  # ids and lazy loaders, no pixels yet
    prompts = {p.id: p.text for p in spec.prompts}
    started = time.perf_counter()
    outputs = loops.run(samples, prompts, batched=batched)
    return time.perf_counter() - started, outputs


class Referee:
    """Tells, for an output that differs from the naive loop's, whether it parts from it at a
    near-tie of the plain path (float arithmetic) or not (a real difference)."""

    def __init__(self, spec: Any) -> None:
        from audit.backends import load_backend
        from audit.backends.hf.fast.self_check import TIE_TOLERANCE
        from audit.datasets import open_dataset

        self.backend: Any = load_backend(spec.model.id, spec.model)
        self.tolerance = TIE_TOLERANCE["float32"]
        self.samples = {s.sample_id: s for s in open_dataset(spec).samples()}
        self.prompts = {p.id: p.text for p in spec.prompts}

    def gap(self, key: Key, got: Output, naive: Output) -> float:
        """Nats between the plain path's two most likely tokens where ``got`` leaves ``naive``
        (``inf`` where one stops and the other goes on)."""
        from audit.backends import GenerationRequest

        part = self._parting(got, naive.token_ids)
        if part is None:
            return math.inf
        image = self.samples[key[0]].load_image().convert("RGB")
        request = GenerationRequest(image, self.prompts[key[1]])
        with self.backend.fast_paths.limited_to(()):
            logprobs = self.backend.next_token_logprobs(request, naive.token_ids[:part])
        top = logprobs.topk(2).values
        return float(top[0] - top[1])

    def _parting(self, got: Output, ids: tuple[int, ...]) -> int | None:
        """The first of ``ids`` that ``got`` does not follow: by token where ``got`` has token
        ids, else by text (the runner stores text only)."""
        if got.token_ids:
            pairs = enumerate(zip(got.token_ids, ids, strict=False))
            return next((n for n, (a, b) in pairs if a != b), None)
        decode = self.backend.processor.tokenizer.decode
        return next(
            (
                n
                for n in range(len(ids))
                if not got.text.startswith(decode(ids[: n + 1], skip_special_tokens=True))
            ),
            None,
        )


@dataclass(frozen=True)
class Agreement:
    """How one side's outputs compare with the naive loop's."""

    n_identical: int
    near_ties: tuple[tuple[Key, float], ...]
    differing: tuple[Key, ...]

    def describe(self, n: int, tolerance: float) -> str:
        text = f"{self.n_identical}/{n} identical"
        if self.near_ties:
            gaps = ", ".join(f"{key[0]} {key[1]}: {gap:.1e}" for key, gap in self.near_ties)
            text += f", {len(self.near_ties)} parting at a near-tie <= {tolerance:g} nats ({gaps})"
        if self.differing:
            text += f", {len(self.differing)} DIFFERENT: {list(self.differing[:3])}"
        return text


def compare(outputs: dict[Key, Output], naive: dict[Key, Output], referee: Referee) -> Agreement:
    identical = 0
    ties: list[tuple[Key, float]] = []
    differing: list[Key] = []
    for key in sorted(set(outputs) | set(naive)):
        got, expected = outputs.get(key), naive.get(key)
        if got is None or expected is None:
            differing.append(key)
        elif (got.text, got.n_tokens) == (expected.text, expected.n_tokens):
            identical += 1
        elif (gap := referee.gap(key, got, expected)) <= referee.tolerance:
            ties.append((key, gap))
        else:
            differing.append(key)
    return Agreement(identical, tuple(ties), tuple(differing))


@dataclass(frozen=True)
class FamilyResult:
    family: str
    n_generations: int
    seconds: dict[str, tuple[float, ...]]
    agreement: dict[str, Agreement]
    tolerance: float

    def ratio(self, side: str, baseline: str) -> list[float]:
        """Per repetition: how many times faster ``side`` was than ``baseline``."""
        return [b / s for s, b in zip(self.seconds[side], self.seconds[baseline], strict=True)]

    def rate(self, side: str) -> float:
        return self.n_generations / statistics.median(self.seconds[side])

    @property
    def differs(self) -> bool:
        return any(a.differing for a in self.agreement.values())


def measure_family(setup: Setup, family: str) -> FamilyResult:
    from audit.spec import load_probe

    spec = load_probe(prepare_probe(setup, family))
    loops = Loops(Path(spec.model.id), setup.max_new_tokens)
    run_dir = setup.work_dir / "runs" / family
    measure = {
        "runner": lambda limit=None: run_runner(spec, run_dir, limit=limit),
        "runner_plain": lambda limit=None: run_runner(spec, run_dir, fast_paths=False, limit=limit),
        "card": lambda limit=None: run_loop(loops, spec, batched=True, limit=limit),
        "naive": lambda limit=None: run_loop(loops, spec, batched=False, limit=limit),
    }
    for side in SIDES:  # warm-up (not timed): lazy imports and kernel selection
        measure[side](limit=2)
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    outputs: dict[str, dict[Key, Output]] = {}
    for rep in range(setup.repeats):
        order = SIDES[rep % len(SIDES) :] + SIDES[: rep % len(SIDES)]
        for side in order:
            elapsed, outputs[side] = measure[side]()
            seconds[side].append(elapsed)
        print(
            f"  rep {rep + 1}: "
            + " | ".join(f"{LABELS[side]} {seconds[side][-1]:.1f} s" for side in SIDES),
            flush=True,
        )
    referee = Referee(spec)
    agreement = {
        side: compare(outputs[side], outputs["naive"], referee) for side in SIDES if side != "naive"
    }
    return FamilyResult(
        family,
        len(outputs["naive"]),
        {side: tuple(values) for side, values in seconds.items()},
        agreement,
        referee.tolerance,
    )


def _ratio_text(result: FamilyResult, side: str, baseline: str) -> str:
    ratios = result.ratio(side, baseline)
    return f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})"


def describe(result: FamilyResult) -> str:
    target = statistics.median(result.ratio("runner", "naive"))
    met = "met" if target >= TARGET_RATIO else "NOT met"
    rates = ", ".join(f"{LABELS[side]} {result.rate(side):.2f}" for side in SIDES)
    lines = [
        f"  generations/s: {rates}",
        f"  runner over naive loop: {_ratio_text(result, 'runner', 'naive')} "
        f"[target >= {TARGET_RATIO:g}x: {met}]",
        f"  runner over card's batched generate: {_ratio_text(result, 'runner', 'card')}",
        f"  runner over runner without fast paths: {_ratio_text(result, 'runner', 'runner_plain')}"
        " (what the fast paths buy)",
    ]
    for side, agreement in result.agreement.items():
        lines.append(
            f"  outputs of the {LABELS[side]} against the naive loop: "
            + agreement.describe(result.n_generations, result.tolerance)
        )
    return "\n".join(lines)


def parse_setup(argv: Sequence[str] | None) -> Setup:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="idefics,idefics2,idefics3,gemma3")
    add_run_arguments(parser, images=24, max_new_tokens=32, batch_size=16)
    args = parser.parse_args(argv)
    apply_quick(args)
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
    """Run the benchmark; exit status 1 if any output differs from the naive loop's other than
    at a near-tie."""
    setup = parse_setup(argv)
    set_offline_env(setup.work_dir)
    limit_threads(setup.n_threads)
    quiet_progress_bars()
    print_header(
        "runner vs the loops it replaces: generations/s, same model, inputs and outputs",
        setup.n_threads,
    )
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
    for baseline in ("naive", "card", "runner_plain"):
        ratios = ", ".join(
            f"{r.family} {statistics.median(r.ratio('runner', baseline)):.2f}x" for r in results
        )
        print(f"summary (runner over {LABELS[baseline]}, median): {ratios}")
    return 1 if any(r.differs for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
