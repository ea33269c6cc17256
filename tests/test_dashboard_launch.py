"""``audit dashboard``: finding the app, the command it runs, and bad input."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from test_report_fixture import write_handmade_run
from typer.testing import CliRunner

from audit.cli import app
from audit.dashboard.launch import (
    RUN_DIRS_ENV,
    app_entry,
    launch,
    run_dirs_env,
    run_dirs_from_env,
    streamlit_command,
)
from audit.errors import AuditError, RunDirError

ROOT = Path(__file__).resolve().parents[1]


def test_app_entry_is_the_multipage_home() -> None:
    entry = app_entry()
    assert entry.name == "Home.py" and (entry.parent / "pages").is_dir()


def test_command_is_headless_local_and_without_usage_stats() -> None:
    command = streamlit_command(8600)
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    options = dict(zip(command[5::2], command[6::2], strict=True))
    assert options["--server.headless"] == "true"
    assert options["--browser.gatherUsageStats"] == "false"
    assert options["--server.address"] == "127.0.0.1"
    assert options["--server.port"] == "8600"


def test_run_dirs_round_trip_through_the_environment(tmp_path: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b b"]
    value = run_dirs_env(dirs)
    assert run_dirs_from_env({RUN_DIRS_ENV: value}) == [d.resolve() for d in dirs]
    assert run_dirs_from_env({}) == []


def test_bad_run_directory_fails_before_streamlit_starts(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no such run directory"):
        launch([tmp_path / "missing"], port=8765)
    result = CliRunner().invoke(app, ["dashboard", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such run directory" in result.output
    assert "Traceback" not in result.output


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    run = write_handmade_run(tmp_path / "run", n=12, analyses=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(AuditError, match=f"--port {port}: already in use"):
            launch([run], port=port)


def test_host_is_loopback_unless_asked_and_a_bad_host_is_a_clear_error(tmp_path: Path) -> None:
    run = write_handmade_run(tmp_path / "run", n=12, analyses=False)
    command = streamlit_command(8501)
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    result = CliRunner().invoke(app, ["dashboard", str(run), "--host", "no-such-host.invalid"])
    assert result.exit_code == 2 and "--host no-such-host.invalid" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["dashboard", str(run), "--host", "203.0.113.7"])
    assert result.exit_code == 2 and "--host 203.0.113.7: cannot serve there" in result.output


def test_wheel_ships_the_app_and_the_templates(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("audit",):
        shutil.copytree(
            ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "audit/dashboard/app/Home.py",
        "audit/report/templates/report.html.j2",
        "audit/report/templates/report.md.j2",
        "audit/report/assets/plotly-basic-4.1.1.min.js",
        "audit/dashboard/launch.py",
    } <= names
    pages = (ROOT / "audit" / "dashboard" / "app" / "pages").glob("*.py")
    assert {f"audit/dashboard/app/pages/{p.name}" for p in pages} <= names
    assert not any(name.startswith("app/") for name in names)  # no top-level "app" package
    target = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(target)
    located = subprocess.run(
        [sys.executable, "-c", "from audit.dashboard.launch import app_entry; print(app_entry())"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"},
    ).stdout.strip()
    assert Path(located) == target / "audit" / "dashboard" / "app" / "Home.py"


def test_cli_serves_the_app_until_interrupted(tmp_path: Path) -> None:
    run = write_handmade_run(tmp_path / "run", n=12)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-c",
        "from audit.cli import main; main()",
        "dashboard",
        str(run),
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{port}/_stcore/health"
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline, "the dashboard did not come up"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert b'<div id="root"' in response.read()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert f"dashboard: http://127.0.0.1:{port}" in output
