"""HTTP to an OpenAI-compatible server: many requests in flight, retries, and the line between a
request that failed and a setup that is broken.

One call sends a list of JSON bodies concurrently (at most ``concurrency`` in flight) and returns
one ``Outcome`` per body, in order. A request is retried with exponential backoff and full
jitter after 429, 5xx, a timeout or a dropped connection, honouring ``Retry-After``; one that
keeps failing, or that the server refuses as bad (400, 413, 422), becomes an ``Outcome`` with an
error, and the others go on. What no retry can fix raises ``EndpointRefused`` at once: the key
refused (401, 403), the path or model unknown (404), or nothing listening before any request
ever succeeded. The API key goes out in the ``Authorization`` header only and is scrubbed from
any text that comes back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2

from audit.errors import AuditError

logger = logging.getLogger(__name__)

#: Statuses worth another try: the server is busy, overloaded or restarting.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: Statuses no retry can fix and that no other request would escape.
REFUSED_STATUSES = frozenset({401, 403, 404})
MAX_BACKOFF_S = 60.0
#: Characters of a server's error text kept in an error row or message.
ERROR_TEXT_CHARS = 300


class EndpointRefused(AuditError):
    """The endpoint cannot serve this run at all (auth, unknown model or path, unreachable)."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 300.0

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Full jitter over an exponentially growing window; the server's ``Retry-After`` wins."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), MAX_BACKOFF_S)
        return rng.uniform(0, min(self.backoff_s * 2**attempt, MAX_BACKOFF_S))


@dataclass(frozen=True)
class Outcome:
    """A parsed JSON answer, or why there is none after the retries."""

    body: Any = None
    error: str | None = None
    attempts: int = 1
    #: The last try found nothing listening (the server went away).
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class _Retry(Exception):
    def __init__(
        self, reason: str, retry_after_s: float | None = None, unreachable: bool = False
    ) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.unreachable = unreachable


class EndpointClient:
    """Requests to one base URL (``http://host:8000/v1``) with one key and one policy."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        policy: RetryPolicy,
        concurrency: int,
        key_source: str = "",
    ) -> None:
        parts = urlsplit(base_url)
        #: The base without its query; a query (``?api-version=...``) goes on every request.
        self.base_url = urlunsplit(parts._replace(query="")).rstrip("/")
        self._query = parts.query
        self._api_key = api_key
        self.policy = policy
        self.concurrency = concurrency
        self._key_source = key_source
        self._rng = random.Random()
        #: Whether any request has succeeded yet: before that, nothing listening is the setup's
        #: fault, not one request's.
        self.any_success = False
        self.retries = 0

    # -- public --------------------------------------------------------------------------------
    def get(self, path: str) -> Outcome:
        """One GET (``/models``), retried like any request."""
        return asyncio.run(self._all("GET", path, [None]))[0]

    def post_all(self, path: str, bodies: Sequence[dict[str, Any]]) -> list[Outcome]:
        """Every body POSTed concurrently; outcomes in order."""
        if not bodies:
            return []
        return asyncio.run(self._all("POST", path, list(bodies)))

    def scrub(self, text: str) -> str:
        """Text from a server, cut short, with the key (if it echoed it) blanked out."""
        text = text.strip()[:ERROR_TEXT_CHARS]
        return text.replace(self._api_key, "***") if self._api_key else text

    # -- the work ------------------------------------------------------------------------------
    async def _all(self, method: str, path: str, bodies: list[Any]) -> list[Outcome]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx2.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        slots = asyncio.Semaphore(self.concurrency)
        async with httpx2.AsyncClient(
            headers=headers, limits=limits, timeout=httpx2.Timeout(self.policy.timeout_s)
        ) as client:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._one(client, slots, method, path, body))
                        for body in bodies
                    ]
            except BaseExceptionGroup as failed:  # one refusal cancels the rest
                refused = failed.subgroup(EndpointRefused)
                if refused is not None:
                    raise _first(refused) from None
                raise
        return [task.result() for task in tasks]

    async def _one(
        self,
        client: httpx2.AsyncClient,
        slots: asyncio.Semaphore,
        method: str,
        path: str,
        body: Any,
    ) -> Outcome:
        attempt = 0
        while True:
            async with slots:
                try:
                    answer = await self._send(client, method, path, body)
                    self.any_success = True
                    return Outcome(body=answer, attempts=attempt + 1)
                except _Retry as retry:
                    reason, retry_after_s, unreachable = (
                        str(retry),
                        retry.retry_after_s,
                        retry.unreachable,
                    )
                except _Final as final:
                    return Outcome(error=str(final), attempts=attempt + 1)
            if attempt >= self.policy.max_retries:
                return Outcome(
                    error=f"{reason} (gave up after {attempt + 1} attempts)",
                    attempts=attempt + 1,
                    unreachable=unreachable,
                )
            self.retries += 1
            await asyncio.sleep(self.policy.delay_s(attempt, retry_after_s, self._rng))
            attempt += 1

    async def _send(self, client: httpx2.AsyncClient, method: str, path: str, body: Any) -> Any:
        url = self.base_url + path + (f"?{self._query}" if self._query else "")
        try:
            response = await client.request(method, url, json=body)
        except httpx2.ConnectError as error:
            if not self.any_success:
                raise EndpointRefused(
                    f"cannot connect to the endpoint {self.base_url} ({_reason(error)}): is the "
                    "server running and is model.endpoint.url (or --endpoint) its address?"
                ) from None
            raise _Retry(f"connection failed: {_reason(error)}", unreachable=True) from None
        except httpx2.TimeoutException:
            raise _Retry(f"no answer within {self.policy.timeout_s:g} s") from None
        except httpx2.TransportError as error:  # reset, closed before an answer, ...
            raise _Retry(f"connection lost: {_reason(error)}") from None
        status = response.status_code
        if status in REFUSED_STATUSES:
            raise EndpointRefused(self._refusal(status, url, response.text)) from None
        if status in RETRY_STATUSES or status >= 500:
            raise _Retry(
                f"HTTP {status}: {self.scrub(response.text)}", _retry_after(response)
            ) from None
        if status >= 300:
            raise _Final(f"HTTP {status}: {self.scrub(response.text)}")
        try:
            return response.json()
        except ValueError:
            raise _Retry(f"HTTP {status} with an answer that is not JSON") from None

    def _refusal(self, status: int, url: str, text: str) -> str:
        detail = self.scrub(text)
        if status == 404:
            return (
                f"the endpoint answered 404 Not Found for {url} ({detail}): check that "
                "model.endpoint.url (or --endpoint) is the API's base, usually ending in /v1, "
                "and that the model name is one the server serves"
            )
        key = (
            f"the API key from the environment variable {self._key_source}"
            if self._key_source
            else "no API key (set model.endpoint.api_key_env to the NAME of a variable holding it)"
        )
        return f"the endpoint refused the request with HTTP {status} ({detail}); it was sent {key}"


class _Final(Exception):
    """A request the server refused as bad: retrying sends the same bad request."""


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exception: BaseException = group
    while isinstance(exception, BaseExceptionGroup):
        exception = exception.exceptions[0]
    return exception


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: the exponential backoff is good enough
        return None
