"""Benchmark: ``audit analyze`` on 100,000 simulated generations (3 prompts x 14 groups).

33,334 simulated images (gender x race, balanced) x 3 prompts, with planted terms and refusals,
analysed with every statistics analysis (term variance with its permutation tests, refusal,
generation statistics, leakage; classification and confusion have no rows here). Toxicity is
left out: it runs a neural scorer, measured on its own. Target: under 30 s on 2 CPU cores.

    python benchmarks/analyze_100k.py [--out DIR] [--images N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from audit.analyses import analyze_run
from audit.ingest.simulate import PlantedRate, PlantedTerm, Simulation, write_simulated_run

ANALYSES = [
    "term_variance",
    "refusal",
    "generation_stats",
    "leakage",
    "classification",
    "confusion",
]


def simulation(n_images: int) -> Simulation:
    """Three prompts, FairFace's 14 gender x race groups, a few planted effects."""
    return Simulation(
        n_images=n_images,
        planted_terms=(
            PlantedTerm("umbrella", "gender", "Female", rate=0.12, base_rate=0.10),
            PlantedTerm("bicycle", "race", "East Asian", rate=0.12, base_rate=0.10),
            PlantedTerm("lantern", "race", "Black", rate=0.15, base_rate=0.10, prompt_id="story"),
        ),
        refusal_rate=0.05,
        planted_refusals=(PlantedRate("race", "Indian", 0.08),),
        error_rate=0.01,
        seed=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: temp)")
    parser.add_argument("--images", type=int, default=33_334, help="images (x 3 prompts)")
    args = parser.parse_args()
    run_dir = args.out or Path(tempfile.mkdtemp(prefix="analyze-100k-")) / "run"
    started = time.perf_counter()
    write_simulated_run(run_dir, simulation(args.images))
    print(
        f"simulated {3 * args.images:,} generations in {time.perf_counter() - started:.1f} s "
        f"-> {run_dir}"
    )
    started = time.perf_counter()
    result = analyze_run(run_dir, only=ANALYSES)
    elapsed = time.perf_counter() - started
    print(result.describe())
    print(
        f"\naudit analyze ({', '.join(ANALYSES)}): {elapsed:.1f} s on {os.cpu_count()} CPU(s) "
        f"[target < 30 s]"
    )


if __name__ == "__main__":
    main()
