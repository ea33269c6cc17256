"""Real HTTP servers for the endpoint backend's tests: ``transformers serve`` with a tiny model,
a fault-injecting proxy in front of it, and a tiny server that scores prompts as vLLM does."""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from benchmarks.common import transformers_serve as serve


@dataclass
class Served:
    """A running ``transformers serve``: its base URL, the model name it serves, its log."""

    url: str
    model: str
    log: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def transformers_serve(model_dir: Path, log: Path, timeout_s: float = 90) -> Iterator[Served]:
    """``transformers serve MODEL_DIR`` on 127.0.0.1, offline, logging each request received
    (transformers) and answered (uvicorn's access log) in order to ``log``."""
    with serve(model_dir, log, timeout_s=timeout_s, extra_args=("--log-level", "info")) as (
        url,
        process,
    ):
        yield Served(f"{url}/v1", str(model_dir), log, process)


def most_in_flight(log: str) -> int:
    """The most chat requests the server had received and not yet answered, from its log."""
    in_flight = most = 0
    for line in log.splitlines():
        if "[Request received]" in line:
            in_flight += 1
            most = max(most, in_flight)
        elif '"POST /v1/chat/completions HTTP/1.1"' in line:
            in_flight = max(0, in_flight - 1)
    return most


# -- a proxy that breaks some requests ----------------------------------------------------------
#: What the proxy does with one request: forward it, answer with a status, drop the connection
#: without an answer, forward it after a delay, or drop it and stop listening.
Fault = tuple[str, float] | None
Rule = Callable[[int, bytes, int], Fault]


@dataclass
class ProxyLog:
    """What the proxy saw: bodies by attempt, authorization headers, concurrency."""

    attempts: dict[bytes, int] = field(default_factory=dict)
    authorizations: set[str] = field(default_factory=set)
    faults: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ReusableServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def fault_proxy(upstream: str, rule: Rule) -> Iterator[tuple[str, ProxyLog]]:
    """An HTTP proxy to ``upstream`` (``http://host:port``) that applies ``rule(index, body,
    attempt)`` to each request (one call at a time): ``index`` counts distinct bodies in arrival
    order, ``attempt`` counts the tries of this body (0 first)."""
    record = ProxyLog()
    order: dict[bytes, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._handle(b"")

        def do_POST(self) -> None:
            self._handle(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def _handle(self, body: bytes) -> None:
            with record.lock:
                record.authorizations.add(self.headers.get("Authorization", ""))
                attempt = record.attempts.get(body, 0)
                record.attempts[body] = attempt + 1
                index = order.setdefault(body, len(order))
                record.in_flight += 1
                record.most_in_flight = max(record.most_in_flight, record.in_flight)
                fault = rule(index, body, attempt) if body else None
                if fault is not None:
                    record.faults.append(f"{fault[0]} {fault[1]:g}")
            try:
                if fault is not None and fault[0] == "stop":  # stop listening altogether
                    server = self.server
                    threading.Thread(
                        target=lambda: (server.shutdown(), server.server_close()), daemon=True
                    ).start()
                if fault is not None and fault[0] in {"drop", "stop"}:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault[0] == "status":
                    self._answer(int(fault[1]), b'{"error": "injected"}', {"Retry-After": "0"})
                    return
                if fault is not None and fault[0] == "delay":
                    time.sleep(fault[1])
                self._forward(body)
            finally:
                with record.lock:
                    record.in_flight -= 1

        def _forward(self, body: bytes) -> None:
            try:
                response = httpx2.request(
                    self.command,
                    upstream + self.path,
                    content=body or None,
                    headers={"Content-Type": "application/json"},
                    timeout=60,
                )
            except httpx2.TransportError:  # the client gave up on a delayed request meanwhile
                return
            self._answer(response.status_code, response.content, {})

        def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                self.close_connection = True

    with _serving(Handler) as address:
        yield f"{address}/v1", record


@contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = _ReusableServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- a server that scores prompts as vLLM does -------------------------------------------------
MODEL = "scorer-1"


def words(text: str) -> list[str]:
    """The scoring server's tokens: each word with the spaces before it."""
    return re.findall(r"\s*\S+", text)


def token_logprob(token: str) -> float:
    """A made-up but deterministic log-prob: longer tokens are less likely, "female" more."""
    return -0.1 * len(token.strip()) + (0.3 if "female" in token else 0.0)


class Received(list[dict[str, Any]]):
    """The bodies a test server received, and every path it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.paths_seen: list[str] = []


@contextmanager
def prompt_scoring_server() -> Iterator[tuple[str, Received]]:
    """``/v1/models`` and ``/v1/chat/completions`` with vLLM's ``prompt_logprobs``: the prompt is
    the messages' text, ``Role: text`` a line each, cut after the last message when
    ``continue_final_message`` is set; each token's entry also lists a top-ranked other token,
    as vLLM does when the prompt's token is not the most likely one. Yields its base URL and
    the bodies it received; the paths (with their query) go to ``paths_seen`` on the list."""
    received = Received()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            received.paths_seen.append(self.path)
            self._answer({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

        def do_POST(self) -> None:
            received.paths_seen.append(self.path)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            received.append(body)
            lines = []
            for message in body["messages"]:
                content = message["content"]
                parts = [content] if isinstance(content, str) else content
                text = "".join(p if isinstance(p, str) else p.get("text", "<image>") for p in parts)
                lines.append(f"{message['role'].title()}:{text}")
            prompt = "\n".join(lines) + ("" if body.get("continue_final_message") else "\n")
            answer: dict[str, Any] = {
                "object": "chat.completion",
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "a person"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"completion_tokens": 2, "prompt_tokens": 9, "total_tokens": 11},
            }
            if body.get("prompt_logprobs") is not None:
                tokens = words(prompt)
                answer["prompt_logprobs"] = [None] + [
                    {
                        str(i): {"logprob": token_logprob(t), "rank": 7, "decoded_token": t},
                        "99999": {"logprob": -0.01, "rank": 1, "decoded_token": " the"},
                    }
                    for i, t in enumerate(tokens[1:], start=1)
                ]
            self._answer(answer)

        def _answer(self, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with _serving(Handler) as address:
        yield f"{address}/v1", received
