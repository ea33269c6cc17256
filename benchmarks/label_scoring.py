"""Benchmark: scoring k = 9 candidate labels for one image, against one prefill of the prompt.

For each architecture (random-weight ``size="small"`` models: hidden 256, 4 layers, 224 px
images), measured side by side, interleaved, in one run:

- prefill: encode image + prompt and run one forward pass (the floor any method pays);
- shared:  ``score_labels(method="shared_prefix")``: prompt prefilled once, its key/value cache
  repeated over the 9 labels, only the labels' tokens run;
- plain:   ``score_labels(method="plain")``: one full sequence per label (9 in one batch).

Each includes preprocessing and tokenization. Target: shared <= 2x prefill. The two scorings
must agree to float tolerance; the largest difference is printed.

Then FairFace's three tasks (gender, race, age: 2 + 7 + 9 labels) for a batch of images, the
way the runner sends them (one ``score_labels`` call): with each image's prompt prefix
prefilled once for its three tasks (Idefics2, Idefics3), against once per task.

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
from audit.backends.hf.model import HFBackend
from audit.demo.tiny_models import FAMILIES, build_tiny_model
from audit.spec import ModelSpec, load_probe

#: FairFace's classification tasks as the shipped probe defines them: (prefix, continuations).
TASKS = tuple(
    (task.prefix, tuple(task.continuation(label) for label in task.labels))
    for task in load_probe(
        Path(__file__).resolve().parents[1] / "probes" / "fairface.yaml"
    ).classification
)
#: The age task: k = 9 labels.
PREFIX, LABELS = max(TASKS, key=lambda task: len(task[1]))


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


def measure_tasks(backend: HFBackend, repeats: int, n_images: int = 8) -> dict[str, float]:
    """Seconds for the three tasks of ``n_images`` images with the image's prefix shared across
    tasks and without; median of per-repetition ratios, and the largest score difference."""
    times: dict[str, list[float]] = {"shared": [], "per task": []}
    largest_difference = 0.0
    for rep in range(repeats + 1):  # the first is a warm-up
        images = [face_like_image(100 * rep + i) for i in range(n_images)]
        requests = [
            LabelScoreRequest(im, prefix, labels) for prefix, labels in TASKS for im in images
        ]
        scores = {}
        on = set(backend.fast_paths.active())
        for name in ("shared", "per task") if rep % 2 else ("per task", "shared"):
            paths = on if name == "shared" else on - {"image_prefix"}
            with backend.fast_paths.limited_to(paths):
                started = time.perf_counter()
                scores[name] = backend.score_labels(requests, batch_size=n_images)
            if rep:
                times[name].append(time.perf_counter() - started)
        for a, b in zip(scores["shared"], scores["per task"], strict=True):
            largest_difference = max(
                largest_difference, float(np.abs(np.subtract(a.logprob_sums, b.logprob_sums)).max())
            )
    ratios = [b / a for a, b in zip(times["shared"], times["per task"], strict=True)]
    return {
        "shared": statistics.median(times["shared"]),
        "per task": statistics.median(times["per task"]),
        "ratio": statistics.median(ratios),
        "max_abs_difference": largest_difference,
    }


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
    task_lines: list[str] = []
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
        if backend.fast_paths.on("image_prefix"):
            t = measure_tasks(backend, args.repeats)
            task_lines.append(
                f"{family:<10}{t['shared']:>14.2f} s{t['per task']:>14.2f} s"
                f"{t['ratio']:>15.2f}x{t['max_abs_difference']:>16.1e}"
            )
    print(
        "\nFairFace's 3 tasks (2 + 7 + 9 labels) for 8 images in one score_labels call: each "
        "image's prompt prefix prefilled once for its tasks, against once per task"
    )
    print(f"{'model':<10}{'shared':>16}{'per task':>16}{'per task/shared':>16}{'max |diff|':>16}")
    print("\n".join(task_lines) or "(no model shares prefixes across tasks)")


if __name__ == "__main__":
    main()
