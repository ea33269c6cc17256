"""Benchmark: scoring k = 9 candidate labels for one image, against one prefill of the prompt.

For each architecture (random-weight ``size="small"`` models: hidden 256, 4 layers, 224 px
images), measured side by side, interleaved, in one run:

- prefill: encode image + prompt and run one forward pass (the floor any method pays);
- shared:  ``score_labels(method="shared_prefix")``: prompt prefilled once, its key/value cache
  repeated over the 9 labels, only the labels' tokens run;
- plain:   ``score_labels(method="plain")``: one full sequence per label (9 in one batch).

Each includes preprocessing and tokenization. Target: shared <= 2x prefill. The two scorings
must agree to float tolerance; the largest difference is printed.

    python benchmarks/label_scoring.py [--repeats 7] [--models DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from audit.backends import LabelScoreRequest, load_backend
from audit.backends.hf import HFBackend
from audit.spec import ModelSpec
from audit.tiny_models import FAMILIES, build_tiny_model

PREFIX = "a photo of a person"
AGES = ("0 and 2", "3 and 9", "10 and 19", "20 and 29", "30 and 39", "40 and 49", "50 and 59")
LABELS = (
    *(f" between {a} years old." for a in AGES),
    " between 60 and 69 years old.",
    " more than 70 years old.",
)


def face_like_image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def prefill(backend: HFBackend, request: LabelScoreRequest) -> None:
    """Encode image + prompt and run the one forward pass every method needs."""
    prompt = backend.scoring_prompt(request.image, f" {request.prefix}")
    inputs = backend.encode([prompt], "left")
    with torch.inference_mode():
        backend.model(**inputs, use_cache=True, logits_to_keep=1)


def time_one_image(
    backend: HFBackend, request: LabelScoreRequest, rotation: int
) -> tuple[dict[str, float], float]:
    """Seconds of each method on one image, and the largest shared-vs-plain score difference."""
    scores: dict[str, list] = {"shared": [], "plain": []}
    runs: dict[str, Callable[[], object]] = {
        "prefill": lambda: prefill(backend, request),
        "shared": lambda: scores["shared"].extend(
            backend.score_labels([request], method="shared_prefix")
        ),
        "plain": lambda: scores["plain"].extend(
            backend.score_labels([request], batch_size=len(LABELS), method="plain")
        ),
    }
    # Rotate the order so drift on a noisy machine does not favour one method.
    names = list(runs)
    names = names[rotation % 3 :] + names[: rotation % 3]
    elapsed = {name: timed(runs[name]) for name in names}
    shared, plain = scores["shared"][0].logprob_sums, scores["plain"][0].logprob_sums
    return elapsed, float(np.abs(np.subtract(shared, plain)).max())


def measure(backend: HFBackend, repeats: int) -> dict[str, float]:
    """Per method: median seconds per image; per ratio: the median of per-image ratios.

    The three methods run back to back on the same image, so a per-image ratio cancels most of
    the drift of a shared, noisy machine.
    """
    times: dict[str, list[float]] = {"prefill": [], "shared": [], "plain": []}
    largest_difference = 0.0
    time_one_image(
        backend, LabelScoreRequest(face_like_image(10_000), PREFIX, LABELS), 0
    )  # warm-up
    for rep in range(repeats):
        request = LabelScoreRequest(face_like_image(rep), PREFIX, LABELS)
        elapsed, difference = time_one_image(backend, request, rep)
        for name, seconds in elapsed.items():
            times[name].append(seconds)
        largest_difference = max(largest_difference, difference)
    result = {name: statistics.median(values) for name, values in times.items()}
    for a, b in (("shared", "prefill"), ("plain", "prefill"), ("plain", "shared")):
        ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
        result[f"{a}/{b}"] = statistics.median(ratios)
    result["max_abs_difference"] = largest_difference
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed images per architecture")
    parser.add_argument("--models", type=Path, default=None, help="folder for the small models")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.models or Path(tempfile.mkdtemp(prefix="label-scoring-models-"))
    print(
        f"k = {len(LABELS)} labels, 1 image of 224 px, size='small' random-weight models, "
        f"median of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    columns = ("prefill ms", "shared ms", "plain ms", "shared/prefill", "plain/prefill")
    print(f"{'model':<10}" + "".join(f"{c:>16}" for c in (*columns, "plain/shared", "max |diff|")))
    for family in FAMILIES:
        folder = str(build_tiny_model(family, root / family, size="small"))
        backend = load_backend(folder, ModelSpec(id=folder))
        assert isinstance(backend, HFBackend)
        r = measure(backend, args.repeats)
        verdict = "met" if r["shared/prefill"] <= 2 else "NOT met"
        print(
            f"{family:<10}"
            + "".join(f"{1000 * r[k]:>16.1f}" for k in ("prefill", "shared", "plain"))
            + "".join(
                f"{r[k]:>15.2f}x" for k in ("shared/prefill", "plain/prefill", "plain/shared")
            )
            + f"{r['max_abs_difference']:>16.1e}  target shared <= 2x prefill: {verdict}"
        )


if __name__ == "__main__":
    main()
