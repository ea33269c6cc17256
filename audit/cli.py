"""The ``audit`` command: parse arguments, call the library, turn ``AuditError`` into exit 2.

Heavy libraries (torch, transformers, datasets) are imported inside the commands that need
them, so ``audit --help`` and ``audit validate`` stay fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from audit.errors import AuditError
from audit.terminal import terminal_text

if TYPE_CHECKING:
    from audit.run.runner import RunOptions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Bias and fairness audit workbench for vision-language models.",
)


def _echo(text: str, err: bool = False) -> None:
    """Print for the user: text from data is made inert first (``terminal.terminal_text``)."""
    typer.echo(terminal_text(text), err=err)


class _StderrLines(logging.Handler):
    """The library's notes and warnings as plain lines on the current stderr, where the user
    reads them."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"{terminal_text(record.getMessage())}\n")


@app.callback()
def _show_library_warnings() -> None:
    logger = logging.getLogger("audit")
    if not any(isinstance(handler, _StderrLines) for handler in logger.handlers):
        logger.addHandler(_StderrLines(logging.INFO))
        logger.setLevel(logging.INFO)


def _fail(error: AuditError) -> None:
    _echo(f"error: {error}", err=True)
    raise typer.Exit(code=2)


@app.command()
def validate(probe: Annotated[Path, typer.Argument(help="Probe YAML file.")]) -> None:
    """Check a probe file without loading a model."""
    from audit.backends.registry import check_backend_name
    from audit.spec import load_probe

    try:
        spec = load_probe(probe)
        check_backend_name(spec, str(probe))
    except AuditError as error:
        _fail(error)
    n_labels = sum(len(t.labels) for t in spec.classification)
    _echo(
        f"{probe}: ok: probe '{spec.name}', dataset {spec.dataset.source}:"
        f"{spec.dataset.path or 'synthetic'}, model {spec.model.id}, "
        f"{len(spec.prompts)} prompt(s), {len(spec.classification)} classification task(s) "
        f"({n_labels} labels), groups {list(spec.dataset.groups)}"
    )
    missing = [f for _, f in spec.preamble_images() if not spec.resolve_path(f).is_file()]
    if missing:
        _echo(
            f"{probe}: note: {len(missing)} preamble image(s) missing ({', '.join(missing)}): "
            "the run will show the system prompt alone, and say so (preamble.if_images_missing)"
        )


#: ``audit analyze``: some analyses could not run, the others are written (as ``audit run``'s 3).
EXIT_PARTIAL_ANALYSIS = 3

EXIT_CODES = (
    "Exit status: 0 done; 2 bad input (nothing run); 3 partial: stopped by Ctrl-C or SIGTERM, "
    "or rows stored as errors; what is stored is kept, and the printed command (or 'audit run "
    "RUN_DIR') resumes it."
)


@app.command(epilog=EXIT_CODES)
def run(
    probe: Annotated[
        Path,
        typer.Argument(help="Probe YAML file; or a run directory, to resume it as it was started."),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<probe>-<model>).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model hub id or local folder (with --endpoint: the name it serves)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    batch_size: Annotated[str | None, typer.Option(help="Images per batch, or 'auto'.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help=(
                "Base URL of an OpenAI-compatible server (vLLM, SGLang, TGI, transformers "
                "serve, a hosted API), e.g. http://gpu-node:8000/v1: the model is audited "
                "there (--model: the name it serves). docs/endpoint.md"
            )
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="With an endpoint: requests in flight at once.")
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="With an endpoint: the NAME of the environment variable holding its API key."
        ),
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="K/N: run the K-th of N shards (1-based).")
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Start over: the run directory's old run is moved aside (never deleted).",
        ),
    ] = False,
    flush_every: Annotated[
        int, typer.Option(help="Write a part every N rows (fewer lose less on a crash).")
    ] = 512,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    fast_paths: Annotated[
        bool,
        typer.Option(
            help=(
                "Use the speedups that reach into transformers internals, each checked "
                "against the plain path on the first batch (--no-fast-paths: plain path only)."
            )
        ),
    ] = True,
    ray: Annotated[
        str | None,
        typer.Option(
            help=(
                "Spread shards over a Ray cluster: auto (the running cluster), local (start "
                "one here) or its address. The run directory must be on a filesystem every "
                "node shares."
            )
        ),
    ] = None,
    ray_shards: Annotated[
        int | None,
        typer.Option(help="With --ray: number of shards (default: one per GPU, or per CPU)."),
    ] = None,
) -> None:
    """Run a probe: dataset x prompts x model, stored as parquet in a run directory.

    Ctrl-C (or SIGTERM) stops after the batch in flight and keeps every computed row; a second
    one stops at once.
    """
    from audit.run.interrupt import Interrupted
    from audit.run.runner import EXIT_PARTIAL, RunOptions, resume_arguments, run_probe_file

    given = {
        "model": model,
        "limit": limit,
        "batch_size": batch_size,
        "device": device,
        "endpoint": endpoint,
        "concurrency": concurrency,
        "api_key_env": api_key_env,
    }
    try:
        if probe.is_dir():  # a run directory: its probe and the options it was started with
            if out is not None and out.resolve() != probe.resolve():
                raise AuditError(f"--out: not used when resuming the run directory {probe}")
            out = probe
            probe, stored = resume_arguments(out)
            fast_paths = fast_paths and stored.pop("fast_paths", True)
            given = {**stored, **{k: v for k, v in given.items() if v is not None}}
        options = RunOptions.from_cli(
            out=out,
            **given,
            shard=shard,
            fresh=fresh,
            flush_rows=flush_every,
            progress=progress,
            fast_paths=fast_paths,
        )
        if ray is not None:
            _run_on_ray(probe, options, ray, ray_shards)
            return
        if ray_shards is not None:
            raise AuditError("--ray-shards: only used with --ray ADDRESS")
        result = run_probe_file(probe, options)
    except AuditError as error:
        _fail(error)
    except KeyboardInterrupt as stopped:  # before the first batch: nothing computed to keep
        name = stopped.signal_name if isinstance(stopped, Interrupted) else "SIGINT"
        _echo(f"stopped by {name} before any batch ran; nothing new is stored", err=True)
        raise typer.Exit(code=EXIT_PARTIAL) from None
    _echo(result.describe())
    if result.exit_code:
        raise typer.Exit(code=result.exit_code)


def _run_on_ray(probe: Path, options: RunOptions, address: str, n_shards: int | None) -> None:
    from audit.run.ray_launch import RayPlan, run_on_ray

    result = run_on_ray(probe, options, RayPlan(address=address, n_shards=n_shards), _echo)
    _echo(result.describe())
    if result.failed:
        raise typer.Exit(code=1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's models, data and runs.")] = Path(
        "demo-runs"
    ),
) -> None:
    """Offline demo: tiny random-weight IDEFICS v1, Idefics2, Idefics3 on synthetic faces."""
    from audit.demo.run import run_demo

    try:
        run_demo(out)
    except AuditError as error:
        _fail(error)


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Rows done / expected per shard, errors, throughput, what is missing."""
    from audit.store.status import describe_status

    try:
        _echo(describe_status(run_dir))
    except AuditError as error:
        _fail(error)


@app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these analyses (repeatable).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help=(
                "KEY=VALUE: change an analysis setting for this run of the analyses, without "
                "editing the manifest, e.g. n_permutations=5000, toxicity.scorer=detoxify:"
                "original, tfidf.top_k=30 (repeatable; recorded in summary.json)."
            ),
        ),
    ] = None,
    trust_checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            help=(
                "A toxicity-scorer checkpoint you trust to run its own code when loaded (one "
                "that holds more than weights); never taken from a probe or run directory "
                "(repeatable)."
            ),
        ),
    ] = None,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            help=(
                "Another run of the same samples (A): store the paired comparison of this run "
                "(B) with it, B − A, which the report and the dashboard then read (repeatable)."
            ),
        ),
    ] = None,
) -> None:
    """Term variance, toxicity, refusal, accuracy, leakage: tidy tables with intervals."""
    from audit.analyses import analyze_run
    from audit.analyses.cross_run import store_comparison
    from audit.store import RunStore

    try:
        bases = [RunStore.open(path) for path in against or []]
        if any(base.root.resolve() == run_dir.resolve() for base in bases):
            raise AuditError(f"--against {run_dir}: a run is compared with another run")
        result = analyze_run(
            run_dir, only=only, overrides=set_ or [], trusted_checkpoints=trust_checkpoint or []
        )
        if result.exit_code == 2:  # nothing was analysed: the reasons are the whole answer
            raise AuditError(
                "\n".join(f"{name}: {message}" for name, message in result.failures.items())
            )
        _echo(result.describe())
        for base in bases:
            comparison = store_comparison(RunStore.open(run_dir), base)
            pairing = comparison.pairing
            _echo(
                f"paired comparison with {base.root}: {len(comparison.table)} rows "
                f"({comparison.n_resamples} resamples, seed {comparison.seed}); images paired: "
                f"{pairing.paired} ({pairing.by_digest} by image digest, "
                f"{pairing.by_sample_id} by sample id, {pairing.by_appearance} by appearance), "
                f"only in A: {pairing.only_a}, "
                f"only in B: {pairing.only_b}"
            )
    except AuditError as error:
        _fail(error)
    if result.failures:
        failed = ", ".join(result.failures)
        _echo(
            f"partial: {len(result.failures)} of {len(result.selected)} analyses could not run "
            f"({failed}); the others are written, and summary.json says why",
            err=True,
        )
        raise typer.Exit(code=EXIT_PARTIAL_ANALYSIS)


@app.command("import")
def import_(
    source: Annotated[str, typer.Argument(help="Parquet/CSV file, dataset folder or hub id.")],
    out: Annotated[
        Path, typer.Option(help="Folder for the run directory (or directories).")
    ] = Path("runs"),
    preset: Annotated[str | None, typer.Option(help="Named layout, e.g. m4-bias-eval.")] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", help="ROLE=COLUMN, e.g. generation=text (repeatable)."),
    ] = None,
    groups: Annotated[
        list[str] | None, typer.Option("--group", help="Group column (repeatable).")
    ] = None,
    prompt_id: Annotated[
        str | None, typer.Option(help="Prompt id when the file has one prompt.")
    ] = None,
    model_id: Annotated[
        str | None, typer.Option(help="Model that produced the generations.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split, for datasets.")] = "train",
    config: Annotated[str | None, typer.Option(help="Config name, for hub datasets.")] = None,
) -> None:
    """Turn generations made elsewhere into run directories."""
    from audit.ingest.importer import ImportOptions, import_generations

    try:
        options = ImportOptions(
            source=source,
            out=out,
            preset=preset,
            mapping=mapping or [],
            groups=groups or [],
            prompt_id=prompt_id,
            model_id=model_id,
            split=split,
            config=config,
        )
        for run_dir in import_generations(options):
            _echo(f"imported: {run_dir}")
    except AuditError as error:
        _fail(error)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the first run directory).")
    ] = None,
) -> None:
    """Write report.html (self-contained) and report.md (a model-card section)."""
    from audit.report.build import build_report

    try:
        html_path, md_path = build_report(run_dirs, out)
    except AuditError as error:
        _fail(error)
    _echo(f"wrote {html_path}\nwrote {md_path}")


@app.command()
def card(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the first run directory).")
    ] = None,
) -> None:
    """Write card.md (a model card's Bias Evaluation section on one page), card.json (every
    headline number) and model-index YAML (the card's metadata block)."""
    from audit.report.card import write_card

    try:
        files = write_card(run_dirs, out)
    except AuditError as error:
        _fail(error)
    _echo("\n".join(f"wrote {path}" for path in (files.markdown, files.json, *files.model_index)))


@app.command()
def dashboard(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
    host: Annotated[
        str,
        typer.Option(
            help="Address to serve on (default: this machine only; 0.0.0.0 serves every "
            "network the machine is on, and with it the run's images and text)."
        ),
    ] = "127.0.0.1",
) -> None:
    """Explore and compare runs in Streamlit (reads run directories only)."""
    from audit.dashboard.launch import launch

    try:
        launch(run_dirs, port=port, address=host)
    except AuditError as error:
        _fail(error)


def main() -> None:
    try:
        app()
    except AuditError as error:  # raised outside a command body
        _echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
