"""A run's life as a user lives it: Ctrl-C and SIGTERM keep what was computed, the printed
command resumes (with --model, --limit, --shard), `audit run RUN_DIR`, --fresh moves aside."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from audit.store.tables import RunStore
from tests.runs import write_probe

KEYS = {"generations": ["sample_id", "prompt_id"], "classifications": ["sample_id", "task_id"]}
EXIT_PARTIAL = 3


class Run:
    """``audit run`` as a user starts it, in its own process, its stderr read as it comes."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "audit.cli", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
        )
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        while chunk := self.process.stderr.read(1):
            self.stderr += chunk

    def rows_done(self) -> int:
        """The latest count of the run's progress bar (named after the probe, "tiny")."""
        counts = re.findall(r"tiny [^:]*: *\d+%\|[^|]*\| (\d+)/\d+ \[", self.stderr)
        return int(counts[-1]) if counts else 0

    def wait_for_rows(self, at_least: int, timeout_s: float = 120) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the run ended early:\n{self.stderr}"
            if (done := self.rows_done()) >= at_least:
                return done
            time.sleep(0.01)
        raise AssertionError(f"no progress within {timeout_s} s:\n{self.stderr}")

    def finish(self, timeout_s: float = 120) -> tuple[int, str]:
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()  # small: the run's summary
        self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return self.process.returncode, stdout


def audit(*args: str, cwd: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "audit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def printed_command(output: str) -> list[str]:
    """The ``resume with:`` command, as the user would paste it."""
    lines = [line for line in output.splitlines() if line.startswith("resume with: ")]
    assert lines, output
    words = shlex.split(lines[-1].removeprefix("resume with: "))
    assert words[:2] == ["audit", "run"], words
    return words[1:]


def limited(model: str, out: Path) -> list[str]:
    """The options every run of this file is started with."""
    return ["--model", model, "--limit", "30", "--out", str(out)]


def assert_same_rows(run: Path, reference: Path) -> None:
    for table, keys in KEYS.items():
        a = RunStore.open(run).read(table)
        b = RunStore.open(reference).read(table)
        assert not a.duplicated(keys).any(), table
        columns = [c for c in b.columns if c in a.columns]
        a = a.sort_values(keys).reset_index(drop=True)[columns]
        b = b.sort_values(keys).reset_index(drop=True)[columns]
        pd.testing.assert_frame_equal(a, b, check_dtype=False)


def stored_rows(run: Path) -> int:
    store = RunStore.open(run)
    return sum(len(store.read(table)) for table in KEYS)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Path:
    """A probe naming one tiny model, run with another by --model (the hint must keep it)."""
    folder = tmp_path_factory.mktemp("lifecycle")
    return write_probe(
        folder,
        model_dirs["idefics3"],
        dataset={"n": 40},
        generation={"max_new_tokens": 8, "batch_size": 2},
    )


@pytest.fixture(scope="module")
def reference(probe: Path, model_dirs: dict[str, Path]) -> Path:
    """The same run, never interrupted."""
    out = probe.parent / "reference"
    model = str(model_dirs["idefics2"])
    code, output = audit("run", str(probe), *limited(model, out), cwd=probe.parent)
    assert code == 0, output
    return out


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_keeps_every_computed_row_and_the_printed_command_resumes(
    sent: signal.Signals, probe: Path, reference: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    model = str(model_dirs["idefics2"])
    # Parts are written only every 10,000 rows: whatever is on disk was written on the signal.
    args = ["run", str(probe), *limited(model, run_dir)]
    running = Run([*args, "--flush-every", "10000"], cwd=probe.parent)
    done_at_signal = running.wait_for_rows(8)
    running.process.send_signal(sent)
    code, output = running.finish()

    assert code == EXIT_PARTIAL, output + running.stderr
    assert f"stopped by {sent.name}" in output, running.stderr[-3000:]
    assert "stopping after the batch in flight" in running.stderr
    manifest = RunStore.open(run_dir).manifest()
    assert manifest.status.value == "partial"
    kept = stored_rows(run_dir)
    assert done_at_signal <= kept < 120, "every row computed before the signal is stored"
    assert "Traceback" not in running.stderr

    command = printed_command(output)
    assert ["--model", str(Path(model).resolve())] == command[
        command.index("--model") : command.index("--model") + 2
    ]
    code, output = audit(*command, cwd=probe.parent)
    assert code == 0, output
    assert f"resuming: {kept} of 120 rows stored, 0 errors to retry" in output
    assert_same_rows(run_dir, reference)


def test_a_second_ctrl_c_stops_at_once_and_loses_nothing_written(
    probe: Path, reference: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    model = str(model_dirs["idefics2"])
    args = ["run", str(probe), *limited(model, run_dir)]
    running = Run([*args, "--flush-every", "4"], cwd=probe.parent)
    running.wait_for_rows(8)
    running.process.send_signal(signal.SIGINT)
    running.process.send_signal(signal.SIGINT)
    code, output = running.finish()
    assert code == EXIT_PARTIAL, output + running.stderr
    assert "Traceback" not in running.stderr
    assert RunStore.open(run_dir).manifest().status.value == "partial"
    assert 0 < stored_rows(run_dir) < 120

    # The short form: the run directory alone resumes with the options it was started with.
    code, output = audit("run", str(run_dir), "--no-progress", cwd=probe.parent)
    assert code == 0, output
    assert_same_rows(run_dir, reference)


def test_a_sharded_run_prints_the_command_of_its_shard(
    probe: Path, reference: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    model = str(model_dirs["idefics2"])
    common = limited(model, run_dir)
    running = Run(
        ["run", str(probe), *common, "--shard", "1/2", "--flush-every", "4"], probe.parent
    )
    running.wait_for_rows(4)
    running.process.send_signal(signal.SIGTERM)
    code, output = running.finish()
    assert code == EXIT_PARTIAL, output + running.stderr

    command = printed_command(output)
    assert command[-2:] == ["--shard", "1/2"]
    assert audit(*command, cwd=probe.parent)[0] == 0
    code, output = audit(
        "run", str(probe), *common, "--shard", "2/2", "--no-progress", cwd=probe.parent
    )
    assert code == 0, output
    assert RunStore.open(run_dir).manifest().status.value == "complete"
    assert_same_rows(run_dir, reference)  # two shards, one stopped and resumed: one run


def test_a_run_of_another_probe_is_refused_with_how_to_resume_it_and_fresh_moves_it_aside(
    probe: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "live"
    model = str(model_dirs["idefics2"])
    args = ["--model", model, "--limit", "4", "--out", str(run_dir), "--no-progress"]
    assert audit("run", str(probe), *args, cwd=tmp_path)[0] == 0

    # Forgetting --model: refused before any model loads, with the command that resumes.
    code, output = audit("run", str(probe), "--out", str(run_dir), "--no-progress", cwd=tmp_path)
    assert code == 2 and "different probe (differs in: model)" in output, output
    assert "Loading weights" not in output and "Traceback" not in output
    hint = re.search(r"run it as it was started: (audit run .*?);", output)
    assert hint and "--model" in hint.group(1) and "--limit 4" in hint.group(1)
    assert "--fresh moves this run aside" in output

    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file())
    code, output = audit(
        "run",
        str(probe),
        "--out",
        str(run_dir),
        "--limit",
        "2",
        "--fresh",
        "--no-progress",
        cwd=tmp_path,
    )
    assert code == 0, output
    moved = re.search(r"moved the previous run in .* to (\S+)", output)
    assert moved, output
    aside = Path(moved.group(1))
    assert aside.parent == run_dir.parent and aside.name.startswith("live.replaced-")
    assert sorted(p.relative_to(aside) for p in aside.rglob("*") if p.is_file()) == before
    assert len(RunStore.open(aside).read("generations")) == 8
    assert len(RunStore.open(run_dir).read("generations")) == 4


def test_exit_codes_are_explained_in_help(tmp_path: Path) -> None:
    code, output = audit("run", "--help", cwd=tmp_path)
    assert code == 0
    text = " ".join(output.split())
    assert "0 done" in text and "2 bad input" in text and "3 partial" in text
