"""Benchmark: the dashboard's Generations page on a run of 100,002 generations.

33,334 simulated images x 3 prompts, opened in Streamlit's ``AppTest`` (the page run in this
process, as ``streamlit run`` would): the seconds of the first load (the generations read
from parquet into the cache) and of a filter change (a text search and a prompt, served from
the cache), and their ratio. Targets: first load under 15 s and a filter change under 3 s on
2 CPU cores (``tests/test_dashboard_scale.py`` holds the behaviour: one read, none on a
filter change).

    python benchmarks/dashboard_100k.py [--images N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=33_334, help="images (x 3 prompts)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from streamlit.testing.v1 import AppTest

    import audit.dashboard.state as state
    from audit.dashboard.launch import RUN_DIRS_ENV, app_entry, run_dirs_env
    from audit.ingest.simulate import Simulation, write_simulated_run

    run = Path(tempfile.mkdtemp(prefix="dashboard-100k-")) / "run"
    write_simulated_run(run, Simulation(n_images=args.images, classification_axes=()))
    os.environ[RUN_DIRS_ENV] = run_dirs_env([run])
    print(f"dashboard on {3 * args.images:,} generations ({run}); load average {os.getloadavg()}")
    firsts, filters = [], []
    for _ in range(args.repeats):
        state.cached_generations.clear()
        app = AppTest.from_file(str(app_entry()), default_timeout=300).run()
        app.switch_page("pages/5_Generations.py")
        started = time.perf_counter()
        app.run()
        firsts.append(time.perf_counter() - started)
        started = time.perf_counter()
        app.text_input(key="browse_text").set_value("sorry").run()
        app.selectbox(key="browse_prompt").set_value("story").run()
        filters.append((time.perf_counter() - started) / 2)
        assert not app.exception, [e.value for e in app.exception]
    first, change = statistics.median(firsts), statistics.median(filters)
    print(f"first load: {first:.2f} s (median of {args.repeats}; target < 15 s)")
    print(f"filter change: {change:.2f} s (median; target < 3 s)")
    print(f"filter change / first load: {change / first:.3f}")


if __name__ == "__main__":
    main()
