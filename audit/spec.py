"""Probe specification: one YAML file, validated on load.

A probe is data, not code: ``yaml.safe_load`` only, pydantic models with ``extra="forbid"``,
and every problem reported at once as ``file: key.path: what was expected``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit.errors import ProbeError

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

#: Where relative local paths in a probe are resolved from (set by ``load_probe``).
_PROBE_DIR_KEY = "probe_dir"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(StrictModel):
    """Where the face images and their demographic labels come from."""

    source: Literal["hub", "parquet", "disk", "fairface_csv", "synthetic"]
    """``hub``: ``datasets.load_dataset``; ``parquet``: a file or folder of parquet files;
    ``disk``: a ``save_to_disk`` folder; ``fairface_csv``: FairFace's own label CSV + image folder;
    ``synthetic``: face-like images generated in code (demo and tests only)."""
    path: str | None = None
    """Hub id (``HuggingFaceM4/FairFace``) or a local path, relative to the probe file."""
    config: str | None = None
    """Hub configuration name (FairFace: ``"1.25"`` or ``"0.25"``)."""
    split: str = "train"
    """Split to read."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin."""
    labels_csv: str | None = None
    """``fairface_csv`` only: the label file (``file,age,gender,race,service_test``); image paths
    in it are relative to ``path``."""
    image_column: str = "image"
    """Column holding the image."""
    id_column: str | None = None
    """Column with a stable id per row; default: the row index (or file name for CSV layouts)."""
    groups: dict[str, str]
    """Group axis -> dataset column (``{gender: gender_phrase}``); a list means same names."""
    limit: Annotated[int, Field(gt=0)] | None = None
    """Use only the first N samples (in dataset order)."""
    n: Annotated[int, Field(gt=0)] = 56
    """``synthetic`` only: number of images."""
    seed: int = 0
    """``synthetic`` only: generator seed."""

    @field_validator("groups", mode="before")
    @classmethod
    def _groups_from_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {str(v): str(v) for v in value}
        return value

    @field_validator("groups")
    @classmethod
    def _groups_not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("name at least one group axis, e.g. [gender, race]")
        return value

    @model_validator(mode="after")
    def _path_needed(self) -> DatasetSpec:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"source '{self.source}' needs 'path'")
        if self.source == "fairface_csv" and not self.labels_csv:
            raise ValueError("source 'fairface_csv' needs 'labels_csv' (the label file)")
        return self


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


#: Query parameters that would put a credential in the URL (and so in the manifest).
_CREDENTIAL_NAME = re.compile(r"key|token|secret|sig|pass|auth|cred", re.IGNORECASE)


class EndpointSpec(StrictModel):
    """A model served over the OpenAI chat-completions protocol (``backend: endpoint``): vLLM,
    SGLang, TGI, ``transformers serve`` or a hosted API. docs/endpoint.md."""

    url: str
    """Base URL of the API, e.g. ``http://gpu-node:8000/v1`` (no credentials in it)."""
    api_key_env: Annotated[str, Field(pattern=_ENV_NAME)] | None = None
    """NAME of the environment variable that holds the API key (never the key itself); the key
    is read from the environment when the run starts and is sent as a bearer token only."""
    concurrency: Annotated[int, Field(gt=0, le=1024)] = 8
    """Requests in flight at once."""
    timeout_s: Annotated[float, Field(gt=0)] = 300.0
    """Seconds one request may take before it is retried."""
    max_retries: Annotated[int, Field(ge=0, le=20)] = 5
    """Retries of a request after 429, 5xx, a timeout or a dropped connection; after that it is
    stored as an error row (a resumed run retries it)."""
    retry_backoff_s: Annotated[float, Field(ge=0)] = 1.0
    """First retry waits up to this long (full jitter); each further retry doubles it (at most
    60 s). A ``Retry-After`` header from the server takes precedence."""
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """The request field that limits new tokens: ``max_tokens`` (vLLM, SGLang, TGI,
    ``transformers serve``) or ``max_completion_tokens`` (hosted APIs whose newer models refuse
    ``max_tokens``)."""
    label_scoring: Literal["auto", "loglikelihood", "choice"] = "auto"
    """Classification over the endpoint: ``loglikelihood`` ranks labels by their log-probs as the
    server scores the prompt (vLLM's ``prompt_logprobs``); ``choice`` asks the model to name one
    label (answers naming none are counted invalid); ``auto``: the first where the server
    supports it. The two are not comparable: each row and the manifest record the method."""

    @field_validator("url")
    @classmethod
    def _plain_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"expected an http(s) URL such as http://host:8000/v1, got '{value}'")
        secret = [k for k, _ in parse_qsl(parts.query) if _CREDENTIAL_NAME.search(k)]
        if parts.username or parts.password or parts.fragment or secret:
            raise ValueError(
                "give the URL without credentials or fragment (a query such as "
                "?api-version=... is kept); put the API key in an environment variable and "
                "name it in 'api_key_env'"
            )
        return urlunsplit(parts._replace(path=parts.path.rstrip("/")))


class ModelSpec(StrictModel):
    """The vision-language model under audit."""

    id: str
    """Hub id (``HuggingFaceM4/idefics-9b-instruct``) or local folder (relative to the probe)."""
    revision: str | None = None
    """Hub revision to pin; the manifest records the commit actually used."""
    backend: str = "auto"
    """``auto`` picks from ``config.model_type``; or a name from ``audit.backends.registry``
    (``idefics``, ``chat``)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """``auto``: bfloat16 on CUDA, float32 on CPU."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    device_map: Literal["auto"] | None = None
    """``auto`` spreads a model larger than one GPU over all visible GPUs (accelerate)."""
    trust_remote_code: bool = False
    """Run code shipped with the model. Off unless you trust the repository."""
    fast_paths: bool = True
    """Use the speedups that reach into transformers internals, each checked against the plain
    path on the run's first samples (docs/compatibility.md); ``false``: the plain path only."""
    endpoint: EndpointSpec | None = None
    """``backend: endpoint`` only: the server; ``id`` is then the model name it serves."""

    @model_validator(mode="after")
    def _endpoint_with_its_backend(self) -> ModelSpec:
        if self.backend == "endpoint" and self.endpoint is None:
            raise ValueError("backend 'endpoint' needs 'endpoint' with at least 'url'")
        if self.endpoint is not None and self.backend != "endpoint":
            raise ValueError(
                f"'endpoint' is given but backend is '{self.backend}'; say backend: endpoint"
            )
        return self


class GenerationSpec(StrictModel):
    """Decoding settings for the open-ended prompts."""

    max_new_tokens: Annotated[int, Field(gt=0)] | None = None
    """Default: the model family's preset (``audit/backends/presets.py``: 256 for IDEFICS v1,
    512 for Idefics2, as their published evaluations); the manifest records which applied."""
    min_new_tokens: Annotated[int, Field(ge=0)] = 0
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] | None = None
    """Images per batch (each with all its prompts in one ``generate``); ``auto`` finds the
    largest that fits, backing off on out-of-memory. Default: the family's preset."""
    order: Literal["length", "dataset"] = "length"
    """``length``: prompts sorted by length inside a batch (less padding); ``dataset``: each
    batch's sequences in dataset order, image by image, as the card's script ran them."""
    do_sample: bool = False
    """Greedy (the IDEFICS card's setting) unless true."""
    temperature: Annotated[float, Field(gt=0)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: int = 0
    """Seed for sampling and anything random in the run."""
    stop_strings: list[str] = Field(default_factory=list)
    """Stop when any of these appears; the stop string is cut from the text (``<end_of_utterance>``
    and eos always stop)."""
    stop_tokens: list[str] = Field(default_factory=list)
    """Stop on these tokens, each one token of the model's tokenizer (as the card's script:
    ``["</s>", "<end_of_utterance>", "User"]``); the token stays in the text unless it is a
    special token."""


class PreamblePartSpec(StrictModel):
    """One part of a preamble: exactly one of ``text`` or ``image`` (a local file)."""

    text: str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PreamblePartSpec:
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of 'text' or 'image'")
        return self


class TurnSpec(StrictModel):
    """One exchange of a few-shot dialogue: what the user said (text and images), the answer."""

    user: list[PreamblePartSpec]
    assistant: str

    @field_validator("user", mode="before")
    @classmethod
    def _text_shorthand(cls, value: Any) -> Any:
        return [{"text": value}] if isinstance(value, str) else value


class DialogueSpec(StrictModel):
    """A system prompt and a few-shot dialogue shown before every audited turn.

    Each family lays it out in its own format: IDEFICS v1 as ``User:``/``Assistant:`` lines with
    ``<end_of_utterance>``, chat models as system, user and assistant messages.
    """

    system: str = ""
    """The persona: the first text the model sees."""
    turns: list[TurnSpec] = Field(default_factory=list)
    """The example exchanges, in order."""
    if_images_missing: Literal["persona_only", "error"] = "persona_only"
    """When an example image file is not there: run with the system prompt alone (recorded in
    the manifest and the report), or refuse to start."""


class SplitTemplateSpec(StrictModel):
    """The IDEFICS card script's own input construction, reproduced on purpose (IDEFICS v1).

    The script wrote its whole prompt as one string, split it on ``separator`` and put the face
    image in place of piece ``image_piece``; every other piece went to the processor as text.
    """

    text: str
    """The whole prompt with one ``{prompt}`` where the audited prompt goes."""
    separator: str = "<fake_token_around_image>"
    image_piece: Annotated[int, Field(ge=0)] = 1
    """Which piece (0-based, after splitting) the image replaces."""

    @model_validator(mode="after")
    def _consistent(self) -> SplitTemplateSpec:
        if self.text.count("{prompt}") != 1:
            raise ValueError("text must contain '{prompt}' exactly once")
        n_pieces = len(self.text.split(self.separator))
        if self.image_piece >= n_pieces:
            raise ValueError(
                f"image_piece {self.image_piece} does not exist: splitting text on "
                f"'{self.separator}' gives {n_pieces} pieces"
            )
        return self


class PromptSpec(StrictModel):
    """An open-ended prompt shown with each image."""

    id: Annotated[str, Field(pattern=_ID)]
    text: Annotated[str, Field(min_length=1)]


class ClassificationTaskSpec(StrictModel):
    """Zero-shot classification by ranking the log-likelihood of each candidate label."""

    id: Annotated[str, Field(pattern=_ID)]
    target: str
    """The group axis whose value is the correct answer."""
    template: str
    """Text after the image with one ``{label}``: ``"a photo of a {label} person."``. The text
    before ``{label}`` is the prompt; the label and the rest are scored."""
    question: str = ""
    """Optional text placed before the template (after the image)."""
    labels: dict[str, str]
    """Candidate label text -> the dataset value it stands for."""
    context: Literal["card", "chat"] = "card"
    """``card``: the image (as the model family's template lays out an image) then the
    template, no chat wrapper, no preamble, no BOS unless the model's processor writes one (how
    the IDEFICS evaluation scored FairFace; a family that cannot be laid out so, PaliGemma, is
    scored as ``chat``, and the manifest says so); ``chat``: the image in a user turn after the
    preamble, the template as the start of the assistant's answer. Accuracies of the two
    differ."""

    @field_validator("template")
    @classmethod
    def _one_placeholder(cls, value: str) -> str:
        if value.count("{label}") != 1:
            raise ValueError("must contain '{label}' exactly once")
        return value

    @field_validator("labels")
    @classmethod
    def _two_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) < 2:
            raise ValueError("give at least two candidate labels")
        values = list(value.values())
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"each dataset value may have one label only; repeated: {repeated}")
        return value

    @property
    def prefix(self) -> str:
        head = self.template.split("{label}")[0]
        return f"{self.question}{head}".rstrip(" ")

    def continuation(self, label: str) -> str:
        head, tail = self.template.split("{label}")
        space = " " if head.endswith(" ") else ""
        return f"{space}{label}{tail}"


class TfidfSpec(StrictModel):
    """TF-IDF term variance settings (scikit-learn ``TfidfVectorizer``)."""

    max_df: float = 0.95
    min_df: float = 2
    stop_words: Literal["english"] | list[str] | None = "english"
    top_k: Annotated[int, Field(gt=0)] = 20
    ranking: Literal["variance", "card"] = "variance"


class ToxicitySpec(StrictModel):
    """Toxicity scorer: ``detoxify:original|unbiased|multilingual``, ``detoxify:PATH.ckpt``, or
    ``transformers:MODEL`` (a text-classification model id or folder)."""

    scorer: str = "detoxify:original"
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    batch_size: Annotated[int, Field(gt=0)] = 32
    huggingface_config_path: str | None = None
    """detoxify only: a local folder with the base model's config and tokenizer, for offline use."""


class AnalysisSpec(StrictModel):
    """How ``audit analyze`` treats this probe's outputs."""

    exclude_terms: list[str] = Field(default_factory=list)
    """Terms left out of TF-IDF (e.g. the group names themselves)."""
    tfidf: TfidfSpec = Field(default_factory=TfidfSpec)
    refusal_patterns: list[str] | None = None
    """Regular expressions (case-insensitive) that mark a refusal; default: a built-in list."""
    toxicity: ToxicitySpec = Field(default_factory=ToxicitySpec)
    n_permutations: Annotated[int, Field(ge=100)] = 1000
    n_bootstrap: Annotated[int, Field(ge=100)] = 1000
    seed: int = 0


class ProbeSpec(StrictModel):
    """A probe: dataset x prompts and classification tasks x one model."""

    version: Literal[1] = 1
    """Version of this file format."""
    name: Annotated[str, Field(pattern=_ID)]
    description: str = ""
    dataset: DatasetSpec
    model: ModelSpec
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    preamble: DialogueSpec | list[PreamblePartSpec] = Field(default_factory=list)
    """Shown before every prompt: a system prompt and few-shot dialogue (``system``, ``turns``),
    or a list of text and image parts placed at the start of the user turn."""
    split_template: SplitTemplateSpec | None = None
    """Reproduce the IDEFICS card script's split-and-substitute input (IDEFICS v1 only); off
    unless given. Replaces the preamble and the usual turn layout for generation."""
    prompts: list[PromptSpec] = Field(default_factory=list)
    classification: list[ClassificationTaskSpec] = Field(default_factory=list)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    probe_dir: str = "."
    """Set on load: the folder relative paths are resolved from."""

    @field_validator("prompts", "classification")
    @classmethod
    def _unique_ids(cls, items: list[Any]) -> list[Any]:
        if not items:  # only reached when the key is given: a default is not validated
            raise ValueError("is empty: give at least one entry or leave the key out")
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise ValueError(f"id '{item.id}' is used twice; ids must be unique")
            seen.add(item.id)
        return items

    @model_validator(mode="after")
    def _consistent(self) -> ProbeSpec:
        if not self.prompts and not self.classification:
            raise ValueError("give at least one of 'prompts' or 'classification'")
        if self.split_template is not None and self.preamble:
            raise ValueError(
                "give either 'split_template' (the whole prompt as one string) or 'preamble'"
            )
        for task in self.classification:
            if self.split_template is not None and task.context == "chat":
                raise ValueError(
                    f"classification '{task.id}': context 'chat' needs the turn layout, which "
                    "'split_template' replaces; use context 'card'"
                )
            if task.target not in self.dataset.groups:
                raise ValueError(
                    f"classification '{task.id}': target '{task.target}' is not a group axis "
                    f"(dataset.groups has {sorted(self.dataset.groups)})"
                )
        return self

    def resolve_path(self, path: str) -> Path:
        """A local path from the probe, made absolute against the probe's folder."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else Path(self.probe_dir) / candidate

    def preamble_images(self) -> list[tuple[str, str]]:
        """``(key path, file)`` of every image the preamble names."""
        if isinstance(self.preamble, list):
            parts = [(f"preamble[{i}]", p) for i, p in enumerate(self.preamble)]
        else:
            parts = [
                (f"preamble.turns[{t}].user[{i}]", p)
                for t, turn in enumerate(self.preamble.turns)
                for i, p in enumerate(turn.user)
            ]
        return [(f"{key}.image", p.image) for key, p in parts if p.image is not None]

    def model_location(self) -> str:
        """The model's local folder when it exists next to the probe, else the hub id as given."""
        if self.model.endpoint is not None:  # a name the server knows, never a local path
            return self.model.id
        local = self.resolve_path(self.model.id)
        return str(local) if local.exists() else self.model.id


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in {"function-after", "function-before"} or str(item).startswith(
            ("function-", "constrained-", "literal[", "int", "float", "str", "list[", "dict[")
        ):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def format_validation_error(origin: str, error: ValidationError) -> str:
    """All problems at once, one per line, as ``file: key.path: message``."""
    lines = []
    for item in error.errors():
        message = re.sub(r"^Value error, ", "", item["msg"])
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/probes.md for the keys)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{origin}: {_format_loc(tuple(item['loc']))}: {message}")
    return "\n".join(lines)


def parse_probe(data: Any, origin: str, probe_dir: Path) -> ProbeSpec:
    """Validate an already-parsed mapping (from YAML or a manifest)."""
    if not isinstance(data, dict):
        raise ProbeError(
            f"{origin}: (top level): expected a mapping of keys, got {type(data).__name__}"
        )
    data = {**data, _PROBE_DIR_KEY: str(probe_dir)}
    try:
        return ProbeSpec.model_validate(data)
    except ValidationError as error:
        raise ProbeError(format_validation_error(origin, error)) from None


def load_probe(path: str | Path) -> ProbeSpec:
    """Read and validate a probe file. Raises ``ProbeError`` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no such probe file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ProbeError(
            f"{path}: byte {error.start}: not UTF-8 text; a probe is a YAML text file in UTF-8"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(unknown position)"
        problem = getattr(error, "problem", None) or str(error)
        raise ProbeError(f"{path}: {where}: not valid YAML: {problem}") from None
    return parse_probe(data, str(path), path.resolve().parent)


def check_labels(spec: ProbeSpec, values: dict[str, list[str]], origin: str) -> None:
    """Every candidate label must map to a value the dataset's target column can hold."""
    problems = []
    for i, task in enumerate(spec.classification):
        known = values.get(task.target)
        if not known:
            continue
        for text, value in task.labels.items():
            if value not in known:
                problems.append(
                    f"{origin}: classification[{i}].labels.{text}: '{value}' is not a value of "
                    f"column '{spec.dataset.groups[task.target]}' (expected one of {sorted(known)})"
                )
    if problems:
        raise ProbeError("\n".join(problems))
