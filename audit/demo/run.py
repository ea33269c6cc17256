"""``audit demo``: the whole workflow offline, in minutes, on tiny random-weight models.

Builds tiny IDEFICS v1, Idefics2 and Idefics3 models (locally trained tokenizer, saved with
``save_pretrained`` and loaded back with ``from_pretrained``), runs ``probes/demo.yaml`` on
synthetic faces through the same runner as a real audit, analyses and reports the runs, and
analyses a *simulated* run with planted associations so a finding can be seen — random-weight
models produce meaningless text and find nothing real.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from audit.errors import AuditError

FAMILIES = ("idefics", "idefics2", "idefics3")
T = TypeVar("T")


def demo_probe_path() -> Path:
    path = Path(__file__).resolve().parents[2] / "probes" / "demo.yaml"
    if not path.is_file():
        raise AuditError(f"{path}: the demo probe is missing; run the demo from a source checkout")
    return path


def _step(title: str, action: Callable[[], T]) -> T:
    print(f"\n== {title}", flush=True)
    started = time.perf_counter()
    result = action()
    print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    return result


def _audit_command() -> str:
    """``audit`` if it is on PATH, else the path of the one beside this Python (a venv)."""
    if shutil.which("audit"):
        return "audit"
    beside = Path(sys.executable).parent / "audit"
    return str(beside) if beside.exists() else "audit"


def _write_simulation(run_dir: Path, analysis: dict[str, object]) -> None:
    """The simulated run, analysed with the demo's offline toxicity scorer."""
    from audit.ingest.simulate import write_simulated_run
    from audit.store.tables import RunStore

    store = RunStore(write_simulated_run(run_dir, seed=0))
    store.update_manifest(probe={**store.manifest().probe, "analysis": analysis})


def run_demo(out: Path) -> None:
    import torch

    from audit.analyses import analyze_run
    from audit.demo.tiny_models import build_tiny_model
    from audit.demo.tiny_scorer import build_tiny_toxicity_classifier
    from audit.report.build import build_report
    from audit.report.card import write_card
    from audit.run.runner import RunOptions, run_probe
    from audit.spec import load_probe
    from audit.store.tables import RunStore

    # Tiny models are overhead-bound: a second OpenMP thread only spins, and on a small machine
    # with anything else running it made them many times slower.
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = out.resolve()
    print(
        "audit demo: tiny RANDOM-WEIGHT models on SYNTHETIC faces. Their text is meaningless and\n"
        "nothing they 'find' is real; the demo shows the workflow, the files and the statistics."
    )
    models = _step(
        "building tiny random-weight models (IDEFICS v1, Idefics2, Idefics3)",
        lambda: {f: build_tiny_model(f, out / "models" / f) for f in FAMILIES},
    )
    scorer = _step(
        "building a tiny toxicity classifier (20 sentences, a few training steps: a stand-in)",
        lambda: build_tiny_toxicity_classifier(out / "scorers" / "toxicity"),
    )
    base = load_probe(demo_probe_path())
    toxicity = base.analysis.toxicity.model_copy(update={"scorer": f"transformers:{scorer}"})
    spec = base.model_copy(
        update={"analysis": base.analysis.model_copy(update={"toxicity": toxicity})}
    )
    run_dirs = []
    for family in FAMILIES:
        run_dir = out / "runs" / f"demo-{family}"
        RunStore(run_dir).clear()  # the demo's own folder: each demo starts from nothing
        options = RunOptions(out=run_dir, model=str(models[family]))
        result = _step(
            f"audit run probes/demo.yaml --model {models[family]} --out {run_dir}",
            lambda options=options: run_probe(spec, options, probe_path=demo_probe_path()),
        )
        print(result.describe())
        _step(
            f"audit analyze {run_dir}",
            lambda d=run_dir: print(analyze_run(d).describe(max_findings=6)),
        )
        run_dirs.append(run_dir)

    simulated = out / "runs" / "simulated-planted"
    _step(
        "writing a SIMULATED run with planted term-group associations",
        lambda: _write_simulation(simulated, spec.analysis.model_dump(mode="json")),
    )
    _step(
        f"audit analyze {simulated}",
        lambda: print(analyze_run(simulated).describe(max_findings=12)),
    )

    html, markdown = _step(
        "audit report (the three demo runs side by side)",
        lambda: build_report(run_dirs, out / "report-models"),
    )
    sim_html, _ = _step(f"audit report {simulated}", lambda: build_report([simulated], None))
    card = _step(
        "audit card (the model card's Bias Evaluation section, and its metadata)",
        lambda: write_card(run_dirs, out / "report-models"),
    )
    audit = _audit_command()
    print(
        f"\nDone in {time.perf_counter() - started:.0f} s. What to look at next:\n"
        f"  open {html}\n      the three tiny models compared (random text: no real findings)\n"
        f"  open {sim_html}\n      the simulated run: the planted associations are found\n"
        f"  {card.markdown}: the model card's Bias Evaluation section on one page\n"
        f"  {markdown}: the report's leading tables in Markdown (every table: report.html)\n"
        f"  {audit} dashboard {' '.join(str(d) for d in run_dirs)} {simulated}\n"
        f"  {audit} status {run_dirs[0]}\n"
        f"For a real audit: {audit} run probes/fairface.yaml "
        "--model HuggingFaceM4/idefics-9b-instruct"
    )
