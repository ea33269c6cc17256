"""``audit dashboard``: serve the Streamlit app in ``app/`` over one or more run directories.

The app is a multipage Streamlit app (``app/Home.py`` and ``app/pages/`` beside this module),
shipped as package data of ``audit``, so it is found relative to this module both in a source
checkout and in an installed wheel. Run directories reach the app through
the ``AUDIT_RUN_DIRS`` environment variable (absolute paths joined by ``os.pathsep``), which works
the same for ``streamlit run`` and for Streamlit's in-process ``AppTest``.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from audit.errors import AuditError
from audit.report.run_data import load_runs

RUN_DIRS_ENV = "AUDIT_RUN_DIRS"
#: Set (to anything) where the runs shown are fixed (a Space serving a folder of runs): the
#: sidebar then offers no box to open another folder of the machine.
FIXED_RUNS_ENV = "AUDIT_DASHBOARD_FIXED_RUNS"
#: Bind to the loopback interface only: run directories can hold sensitive images and text.
DEFAULT_ADDRESS = "127.0.0.1"


def app_entry() -> Path:
    """The dashboard's main script, ``app/Home.py`` beside this module."""
    entry = Path(__file__).resolve().parent / "app" / "Home.py"
    if not entry.is_file():
        raise AuditError(
            f"{entry}: the dashboard app is missing from this installation; "
            "reinstall the package (pip install vlm-bias-audit)"
        )
    return entry


def run_dirs_from_env(environ: dict[str, str] | None = None) -> list[Path]:
    """The run directories the app was started with (empty when none were given)."""
    value = (os.environ if environ is None else environ).get(RUN_DIRS_ENV, "")
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def run_dirs_env(run_dirs: Sequence[Path]) -> str:
    """The ``AUDIT_RUN_DIRS`` value for these run directories (absolute paths)."""
    return os.pathsep.join(str(Path(p).resolve()) for p in run_dirs)


def streamlit_command(port: int, address: str = DEFAULT_ADDRESS) -> list[str]:
    """``streamlit run`` headless, usage statistics off, no file watcher."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_entry()),
        "--server.headless",
        "true",
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]


def _check_port(port: int, address: str) -> None:
    if not 0 < port < 65536:
        raise AuditError(f"--port {port}: expected a port number between 1 and 65535")
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise AuditError(
            f"--host {address}: not an address of this machine (expected 127.0.0.1, 0.0.0.0, "
            "or a name or address it has)"
        ) from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise AuditError(
                    f"--port {port}: already in use on {address}; choose another with --port"
                ) from None
            raise AuditError(
                f"--host {address}: cannot serve there ({error.strerror}); give an address of "
                "this machine"
            ) from None


def launch(run_dirs: Sequence[Path], port: int = 8501, address: str = DEFAULT_ADDRESS) -> None:
    """Check the run directories, then serve the dashboard until interrupted (Ctrl+C)."""
    load_runs(run_dirs)  # a bad directory fails here with a clear message, not in the browser
    _check_port(port, address)
    env = {**os.environ, RUN_DIRS_ENV: run_dirs_env(run_dirs)}
    print(f"dashboard: http://{address}:{port}  (Ctrl+C to stop)", flush=True)
    try:
        completed = subprocess.run(streamlit_command(port, address), env=env, check=False)
    except KeyboardInterrupt:
        return
    if completed.returncode not in (0, -2, 130):
        raise AuditError(f"streamlit exited with code {completed.returncode}; see its output above")
