"""``backend: endpoint``: a model served over the OpenAI chat-completions protocol.

No weights in this process: each batch's requests go to the server concurrently
(``client.EndpointClient``), so the runner's store, resume, shards and progress work as for local
models. A request that keeps failing comes back as an error result (an error row; a resumed run
retries it); a setup the server refuses stops the run (``client.EndpointRefused``), as does a
first batch in which no request got an answer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from audit.backends.base import (
    DEFAULT_BATCH_SIZE,
    Backend,
    BackendInfo,
    Generation,
    GenerationRequest,
    GenerationSettings,
    LabelScoreRequest,
    LabelScores,
    Preamble,
    PreamblePart,
    ScoringMethod,
)
from audit.backends.endpoint import labels
from audit.backends.endpoint.client import EndpointClient, EndpointRefused, Outcome, RetryPolicy
from audit.backends.endpoint.protocol import (
    ProtocolError,
    chat_body,
    first_choice,
    generation_of,
    image_url,
    lead_parts,
    preamble_messages,
    sampling_fields,
    served_models,
    user_message,
    with_token_field,
)
from audit.errors import AuditError

if TYPE_CHECKING:
    from audit.spec import EndpointSpec, ModelSpec

CHAT = "/chat/completions"
#: A plain grey image for the one request that asks whether the server scores prompts.
_PROBE_IMAGE = Image.new("RGB", (32, 32), (128, 128, 128))


class EndpointBackend(Backend):
    """Generation and label scoring by HTTP; ``load`` checks the server, the key and the model."""

    name: ClassVar[str] = "endpoint"
    supports_card_context: ClassVar[bool] = False

    def __init__(self, model: ModelSpec, preamble: Preamble | Sequence[PreamblePart] = ()) -> None:
        if model.endpoint is None:
            raise AuditError("model.endpoint: the endpoint backend needs 'endpoint.url'")
        self._spec: EndpointSpec = model.endpoint
        self._model = model.id
        self._preamble = Preamble.of(preamble)
        self._settings: GenerationSettings | None = None
        self._client: EndpointClient | None = None
        self._messages: list[dict[str, Any]] = []
        self._lead: list[dict[str, Any]] = []
        self._reported: dict[str, Any] = {}
        self._method: ScoringMethod | None = None
        self._answered = False

    # -- setup -----------------------------------------------------------------------------------
    def load(self) -> None:
        if self._client is not None:
            return
        client = EndpointClient(
            self._spec.url,
            _api_key(self._spec),
            RetryPolicy(self._spec.max_retries, self._spec.retry_backoff_s, self._spec.timeout_s),
            self._spec.concurrency,
            key_source=self._spec.api_key_env or "",
        )
        self._reported = self._server_report(client)
        self._messages = preamble_messages(self._preamble)
        self._lead = lead_parts(self._preamble)
        self._client = client
        self._method = self._label_method(client)
        client.any_success = False  # from here on, "answered" means a model answered

    def _server_report(self, client: EndpointClient) -> dict[str, Any]:
        """What ``GET /models`` says; the model must be among them when the server lists any."""
        outcome = client.get("/models")
        if not outcome.ok:
            return {"models_error": outcome.error}
        served = served_models(outcome.body)
        if served and self._model not in served:
            raise EndpointRefused(
                f"the endpoint {self._spec.url} does not serve the model '{self._model}' "
                f"(it serves: {', '.join(served[:20])}); give one of these as model.id or --model"
            )
        entry = next(
            (
                m
                for m in outcome.body.get("data", [])
                if isinstance(m, dict) and m.get("id") == self._model
            ),
            None,
        )
        return {"served_models": served, "model_entry": entry}

    def _label_method(self, client: EndpointClient) -> ScoringMethod:
        """``label_scoring`` as asked; ``auto`` asks the server to score one tiny prompt."""
        if self._spec.label_scoring != "auto":
            return self._spec.label_scoring
        request = LabelScoreRequest(_PROBE_IMAGE, "a photo of", (" a face.", " a car."))
        outcome = client.post_all(CHAT, [self._loglikelihood_body(request, " a face.")])[0]
        try:
            if outcome.ok:
                labels.label_scores(outcome.body, " a face.")
                return "loglikelihood"
        except ProtocolError:
            pass
        return "choice"

    # -- the interface ---------------------------------------------------------------------------
    def check_settings(self, settings: GenerationSettings) -> None:
        """The protocol stops on strings, not token ids; the settings go in the manifest."""
        if settings.stop_tokens:
            raise ValueError(
                "generation.stop_tokens: a served model cannot be stopped on token ids over the "
                "OpenAI protocol; give them as generation.stop_strings instead"
            )
        self._settings = settings

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        settings: GenerationSettings,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[Generation]:
        client = self._ready()
        fields = self._fields(sampling_fields(settings))
        urls = _image_urls([r.image for r in requests])
        bodies = [
            chat_body(
                self._model,
                [*self._messages, user_message(urls[id(r.image)], r.prompt, self._lead)],
                fields,
            )
            for r in requests
        ]
        outcomes = self._post(client, bodies)
        return [_generation(outcome) for outcome in outcomes]

    def _fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        return with_token_field(fields, self._spec.max_tokens_field)

    def score_labels(
        self, requests: Sequence[LabelScoreRequest], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[LabelScores]:
        client = self._ready()
        if self._method == "loglikelihood":
            urls = _image_urls([r.image for r in requests])
            bodies = [
                self._loglikelihood_body(r, c, urls[id(r.image)])
                for r in requests
                for c in r.continuations
            ]
            outcomes = iter(self._post(client, bodies))
            return [_scored(r, [next(outcomes) for _ in r.continuations]) for r in requests]
        urls = _image_urls([r.image for r in requests])
        bodies = [
            chat_body(
                self._model,
                [*self._context(r), user_message(urls[id(r.image)], labels.choice_question(r))],
                self._fields(labels.CHOICE_FIELDS),
            )
            for r in requests
        ]
        return [_chosen(r, o) for r, o in zip(requests, self._post(client, bodies), strict=True)]

    def info(self) -> BackendInfo:
        settings = self._settings or GenerationSettings()
        record = {
            "url": self._spec.url,
            "served_model": self._model,
            "server_reported": self._reported,
            # Whatever the server runs is its operator's: the audit cannot pin or hash it.
            "weights_under_audit_control": False,
            "settings_sent": self._fields(sampling_fields(settings)),
            "label_scoring": self._method or self._spec.label_scoring,
            # The server's chat template always wraps the user turn: the card's context loses
            # only its preamble here.
            "label_scoring_layout": "chat template; context 'card': no preamble",
            "label_scoring_fields": (
                labels.LOGLIKELIHOOD_FIELDS
                if self._method == "loglikelihood"
                else {**labels.CHOICE_FIELDS, "question": labels.CHOICE_QUESTION}
            ),
            "concurrency": self._spec.concurrency,
            "timeout_s": self._spec.timeout_s,
            "max_retries": self._spec.max_retries,
            "api_key_env": self._spec.api_key_env,
        }
        return BackendInfo(
            backend=self.name,
            model_id=self._model,
            model_type="served",
            revision=None,
            dtype="unknown (server)",
            device="remote",
            image_processor="server's",
            extra={"endpoint": record},
        )

    # -- helpers ---------------------------------------------------------------------------------
    def _ready(self) -> EndpointClient:
        self.load()
        assert self._client is not None
        return self._client

    def _loglikelihood_body(
        self, request: LabelScoreRequest, continuation: str, url: str | None = None
    ) -> dict[str, Any]:
        user = user_message(url or image_url(request.image), None)
        messages = [*self._context(request), *labels.loglikelihood(request, continuation, user)]
        return chat_body(self._model, messages, labels.LOGLIKELIHOOD_FIELDS)

    def _context(self, request: LabelScoreRequest) -> list[dict[str, Any]]:
        """What precedes a label's user turn: the card's context has no preamble; either way the
        server's chat template wraps it (the protocol has no other way in)."""
        return self._messages if request.context == "chat" else []

    def _post(self, client: EndpointClient, bodies: list[dict[str, Any]]) -> list[Outcome]:
        """All bodies at once. A first call in which none got an answer stops the run, and so
        does a later one in which the server stopped listening (its retries spent): the rest of
        the run would only become error rows."""
        outcomes = client.post_all(CHAT, bodies)
        if outcomes and not self._answered and not any(o.ok for o in outcomes):
            raise EndpointRefused(
                f"every request of the first batch to {self._spec.url} failed, so the run "
                f"stopped (nothing was stored for it); first error: {outcomes[0].error}"
            )
        if outcomes and all(o.unreachable for o in outcomes):
            raise EndpointRefused(
                f"the endpoint {self._spec.url} stopped answering ({outcomes[0].error}); the "
                "rows stored so far are kept: resume the run once the server is back"
            )
        self._answered = self._answered or any(o.ok for o in outcomes)
        return outcomes


def _api_key(spec: EndpointSpec) -> str | None:
    if spec.api_key_env is None:
        return None
    key = os.environ.get(spec.api_key_env, "")
    if not key.strip():
        raise AuditError(
            f"model.endpoint.api_key_env: the environment variable {spec.api_key_env} is not set "
            "(or empty); export it with the API key before 'audit run'"
        )
    return key.strip()


def _image_urls(images: Sequence[Image.Image]) -> dict[int, str]:
    """One data URL per distinct image object: a batch's prompts share their sample's image."""
    urls: dict[int, str] = {}
    for image in images:
        if id(image) not in urls:
            urls[id(image)] = image_url(image)
    return urls


def _generation(outcome: Outcome) -> Generation:
    if outcome.ok:
        try:
            return generation_of(outcome.body)
        except ProtocolError as error:
            reason = str(error)
    else:
        reason = outcome.error or "no answer"
    return Generation(text="", n_new_tokens=0, finish_reason="error", error=reason)


def _failed(request: LabelScoreRequest, reason: str) -> LabelScores:
    n = len(request.continuations)
    return LabelScores((), (0,) * n, error=reason)


def _scored(request: LabelScoreRequest, outcomes: list[Outcome]) -> LabelScores:
    sums, counts = [], []
    for continuation, outcome in zip(request.continuations, outcomes, strict=True):
        if not outcome.ok:
            return _failed(request, outcome.error or "no answer")
        try:
            total, count = labels.label_scores(outcome.body, continuation)
        except ProtocolError as error:
            return _failed(request, str(error))
        sums.append(total)
        counts.append(count)
    return LabelScores(tuple(sums), tuple(counts), method="loglikelihood")


def _chosen(request: LabelScoreRequest, outcome: Outcome) -> LabelScores:
    if not outcome.ok:
        return _failed(request, outcome.error or "no answer")
    try:
        message = first_choice(outcome.body).get("message") or {}
    except ProtocolError as error:
        return _failed(request, str(error))
    answer = message.get("content") if isinstance(message, dict) else None
    return labels.choice_scores(request, answer if isinstance(answer, str) else "")
