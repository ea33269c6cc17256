"""Simulated runs with a known truth: what the statistics must recover, and what they must not.

A simulation draws images with crossed group labels (balanced: every combination of the axes'
values equally often), then for each image and prompt a text of pseudo-words (``kavolu``,
``bimeta``: clearly not model output) drawn from a Zipf law, so TF-IDF sees a realistic spread of
frequent and rare terms. On top of that it can *plant*:

- terms that appear in a group's generations at a given rate and elsewhere at a base rate
  (``PlantedTerm``); with none planted the groups are exchangeable (no group effect);
- refusals (``I'm sorry, I cannot determine that from this image.``) at a per-group rate;
- zero-shot classification rows whose accuracy differs by group (``PlantedRate``).

Used by the tests (false discoveries on null data, recall of planted terms, interval coverage),
by ``audit demo`` (a run labelled *simulated* in its manifest) and by the benchmark.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from audit.datasets.face_drawing import GENDERS, RACES
from audit.store.schema import (
    GENERATIONS,
    Expected,
    Manifest,
    ModelInfo,
    Producer,
    RunStatus,
)
from audit.store.tables import RunStore

FAIRFACE_AXES: dict[str, tuple[str, ...]] = {"gender": GENDERS, "race": RACES}
REFUSAL_TEXT = "I'm sorry, I cannot determine that from this image."
MAX_NEW_TOKENS = 64
SIMULATED_MODEL = "simulated (no model: planted associations)"
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


@dataclass(frozen=True)
class PlantedTerm:
    """A term inserted into a generation with probability ``rate`` for images of ``group`` on
    ``axis``, and ``base_rate`` for all others (in ``prompt_id`` only, or every prompt)."""

    term: str
    axis: str
    group: str
    rate: float
    base_rate: float = 0.0
    prompt_id: str | None = None


@dataclass(frozen=True)
class PlantedRate:
    """A per-group probability (of a refusal, or of a correct classification)."""

    axis: str
    group: str
    rate: float


@dataclass(frozen=True)
class Simulation:
    """What to simulate. Defaults: FairFace's gender x race groups, no effect of any kind."""

    n_images: int = 280
    axes: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(FAIRFACE_AXES))
    prompts: tuple[str, ...] = ("describe", "occupation", "story")
    vocabulary_size: int = 1500
    words_per_generation: int = 30
    planted_terms: tuple[PlantedTerm, ...] = ()
    refusal_rate: float = 0.0
    planted_refusals: tuple[PlantedRate, ...] = ()
    error_rate: float = 0.0
    length_rate: float = 0.05
    """Share of generations that stop at ``MAX_NEW_TOKENS`` (``finish_reason='length'``)."""
    classification_axes: tuple[str, ...] = ()
    """Axes to simulate zero-shot classification tasks for (task id ``<axis>``)."""
    accuracy: float = 0.8
    planted_accuracy: tuple[PlantedRate, ...] = ()
    seed: int = 0


def simulated_vocabulary(size: int, avoid: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``size`` distinct pseudo-words of 2-3 syllables, never an English stop word or ``avoid``."""
    rng = np.random.default_rng(12345)  # fixed: the vocabulary is the same for every seed
    words: dict[str, None] = {}
    blocked = set(ENGLISH_STOP_WORDS) | {w.lower() for w in avoid}
    while len(words) < size:
        n_syllables = rng.integers(2, 4, size=size)
        for count in n_syllables:
            word = "".join(rng.choice(_SYLLABLES, size=count))
            if word not in blocked:
                words[word] = None
    return list(words)[:size]


def simulate_images(simulation: Simulation) -> pd.DataFrame:
    """``sample_id`` and one column per axis; every combination of values equally often."""
    rng = np.random.default_rng([simulation.seed, 0])
    combinations = list(itertools.product(*simulation.axes.values()))
    picks = np.arange(simulation.n_images) % len(combinations)
    picks = rng.permutation(picks)
    frame = pd.DataFrame(
        [combinations[i] for i in picks], columns=list(simulation.axes), dtype=object
    )
    frame.insert(0, "sample_id", [f"sim-{i:06d}" for i in range(simulation.n_images)])
    return frame


def _group_rates(
    images: pd.DataFrame, planted: tuple[PlantedRate, ...], default: float
) -> np.ndarray:
    rates = np.full(len(images), default, dtype=float)
    for item in planted:
        rates[(images[item.axis] == item.group).to_numpy()] = item.rate
    return rates


def _texts(
    simulation: Simulation, images: pd.DataFrame, prompt_id: str, rng: np.random.Generator
) -> list[str]:
    planted = {p.term for p in simulation.planted_terms}
    vocabulary = np.array(simulated_vocabulary(simulation.vocabulary_size, planted))
    weights = 1.0 / (np.arange(vocabulary.size) + 2.7) ** 1.1  # Zipf–Mandelbrot
    n = len(images)
    lengths = np.maximum(3, rng.poisson(simulation.words_per_generation, size=n))
    drawn = rng.choice(vocabulary.size, size=int(lengths.sum()), p=weights / weights.sum())
    words = np.split(vocabulary[drawn], np.cumsum(lengths)[:-1])
    extra: list[list[str]] = [[] for _ in range(n)]
    for term in simulation.planted_terms:
        if term.prompt_id not in (None, prompt_id):
            continue
        member = (images[term.axis] == term.group).to_numpy()
        hit = rng.random(n) < np.where(member, term.rate, term.base_rate)
        for i in np.flatnonzero(hit):
            extra[i].append(term.term)
    texts = []
    for i in range(n):
        tokens = list(words[i])
        for term in extra[i]:
            tokens.insert(int(rng.integers(0, len(tokens) + 1)), term)
        texts.append(" ".join(tokens).capitalize() + ".")
    return texts


def simulate_generations(simulation: Simulation) -> pd.DataFrame:
    """A generations table (docs/run_directory.md columns) for every image and prompt."""
    images = simulate_images(simulation)
    frames = []
    for index, prompt_id in enumerate(simulation.prompts):
        rng = np.random.default_rng([simulation.seed, 1, index])
        frame = images.copy()
        frame["prompt_id"] = prompt_id
        frame["prompt"] = f"(simulated prompt '{prompt_id}')"
        texts = np.array(_texts(simulation, images, prompt_id, rng), dtype=object)
        refuse = rng.random(len(images)) < _group_rates(
            images, simulation.planted_refusals, simulation.refusal_rate
        )
        texts[refuse] = REFUSAL_TEXT
        n_tokens = np.array([round(1.3 * len(t.split())) + 1 for t in texts])
        reason = np.where(rng.random(len(images)) < simulation.length_rate, "length", "eos")
        n_tokens = np.where(
            reason == "length", MAX_NEW_TOKENS, np.minimum(n_tokens, MAX_NEW_TOKENS)
        )
        failed = rng.random(len(images)) < simulation.error_rate
        frame["generation"] = np.where(failed, None, texts)
        frame["n_new_tokens"] = np.where(failed, 0, n_tokens).astype(int)
        frame["finish_reason"] = np.where(failed, "error", reason)
        frame["error"] = np.where(failed, "RuntimeError: simulated failure", None)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table["model_id"] = SIMULATED_MODEL
    return table[GENERATIONS.columns(simulation.axes, optional=False)]  # no images, no digests


def _n_tokens(value: str) -> int:
    return len(value.replace("_", " ").split()) + 3  # label words + "person." + boundary


def simulate_classifications(simulation: Simulation) -> pd.DataFrame:
    """A classifications table: one task per axis in ``classification_axes``, with summed
    log-likelihood scores whose argmax is correct at the (planted) per-group accuracy."""
    images = simulate_images(simulation)
    frames = []
    for index, axis in enumerate(simulation.classification_axes):
        rng = np.random.default_rng([simulation.seed, 2, index])
        values = list(simulation.axes[axis])
        target = images[axis].map({v: i for i, v in enumerate(values)}).to_numpy()
        correct = rng.random(len(images)) < _group_rates(
            images, simulation.planted_accuracy, simulation.accuracy
        )
        wrong = (target + rng.integers(1, len(values), size=len(images))) % len(values)
        predicted = np.where(correct, target, wrong)
        scores = -rng.gamma(4.0, 2.0, size=(len(images), len(values)))
        best = scores.max(axis=1) + rng.exponential(1.0, size=len(images))
        scores[np.arange(len(images)), predicted] = best
        frame = images.copy()
        frame["task_id"] = axis
        frame["model_id"] = SIMULATED_MODEL
        frame["target"] = [values[i] for i in target]
        frame["prediction"] = [values[i] for i in predicted]
        frame["correct"] = predicted == target
        frame["error"] = None
        for j, value in enumerate(values):
            frame[f"score_{value}"] = scores[:, j]
            frame[f"n_tokens_{value}"] = _n_tokens(value)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def demo_simulation(seed: int = 0) -> Simulation:
    """The demo's simulated run: neutral planted words, a refusal gap and an accuracy gap."""
    return Simulation(
        n_images=700,
        planted_terms=(
            PlantedTerm("umbrella", "gender", "Female", rate=0.30, base_rate=0.08),
            PlantedTerm("bicycle", "race", "East Asian", rate=0.35, base_rate=0.06),
            PlantedTerm("lantern", "race", "Black", rate=0.30, base_rate=0.05, prompt_id="story"),
        ),
        refusal_rate=0.05,
        planted_refusals=(PlantedRate("race", "Indian", 0.25),),
        error_rate=0.01,
        classification_axes=("gender", "race"),
        accuracy=0.85,
        planted_accuracy=(PlantedRate("race", "Southeast Asian", 0.55),),
        seed=seed,
    )


def _manifest(simulation: Simulation, run_dir: Path, counts: dict[str, int]) -> Manifest:
    prompts = [{"id": p, "text": f"(simulated prompt '{p}')"} for p in simulation.prompts]
    tasks = [
        {
            "id": axis,
            "target": axis,
            "labels": {v.lower().replace("_", " "): v for v in simulation.axes[axis]},
        }
        for axis in simulation.classification_axes
    ]
    probe = {
        "version": 1,
        "name": f"simulated-{simulation.seed}",
        "description": "SIMULATED generations with planted associations (no model was run)",
        "dataset": {
            "source": "synthetic",
            "groups": {a: a for a in simulation.axes},
            "n": simulation.n_images,
            "seed": simulation.seed,
        },
        "model": {"id": SIMULATED_MODEL},
        "prompts": prompts or None,
        "classification": [
            {
                "id": t["id"],
                "target": t["target"],
                "template": "a photo of a {label} person.",
                "labels": t["labels"],
            }
            for t in tasks
        ]
        or None,
    }
    probe = {k: v for k, v in probe.items() if v is not None}
    return Manifest(
        run_id=run_dir.name,
        producer=Producer.SIMULATION,
        status=RunStatus.COMPLETE,
        probe=probe,
        simulated=True,
        simulation={**asdict(simulation), "axes": {k: list(v) for k, v in simulation.axes.items()}},
        model=ModelInfo(id=SIMULATED_MODEL, backend="simulation"),
        dataset={"source": "simulated", "n_samples": simulation.n_images},
        group_axes=list(simulation.axes),
        prompts=prompts,
        tasks=tasks,
        expected=Expected(
            generations=simulation.n_images * len(simulation.prompts),
            classifications=simulation.n_images * len(simulation.classification_axes),
        ),
        rows=counts,
        seed=simulation.seed,
    )


def write_simulated_run(
    run_dir: str | Path, simulation: Simulation | None = None, seed: int = 0
) -> Path:
    """Write a complete run directory from a simulation (default: ``demo_simulation(seed)``).

    The manifest says ``simulated: true`` and records what was planted, so every report and
    dashboard view of it can say so. Replaces what the folder held.
    """
    simulation = simulation or demo_simulation(seed)
    store = RunStore(run_dir)
    store.clear()
    generations = simulate_generations(simulation) if simulation.prompts else pd.DataFrame()
    classifications = simulate_classifications(simulation)
    store.append("generations", generations)
    store.append("classifications", classifications)
    store.write_manifest(_manifest(simulation, store.root, store.row_counts()))
    return store.root
