"""One batch of work: images -> generations and label scores -> rows of the stored tables.

A sample whose image cannot be loaded, or a request the model fails on, becomes an error row;
the batch goes on. Only a failure of every request before anything succeeded is raised, since
that is a broken model or setup rather than a bad sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from PIL import Image

from audit.backends.base import (
    Backend,
    Generation,
    GenerationRequest,
    GenerationSettings,
    LabelScoreRequest,
    LabelScores,
)
from audit.backends.hf.fast.policy import VERIFIED_TRANSFORMERS
from audit.datasets.base import Sample
from audit.datasets.image_hash import image_sha256
from audit.errors import AuditError
from audit.spec import ClassificationTaskSpec, ProbeSpec, PromptSpec
from audit.store.schema import IMAGE_HASH
from audit.store.thumbnails import thumbnail_jpeg

Request = TypeVar("Request")
Result = TypeVar("Result")
Spec = TypeVar("Spec", PromptSpec, ClassificationTaskSpec)


@dataclass(frozen=True)
class WorkItem:
    """A sample and what is still missing for it in the store."""

    sample: Sample
    prompts: tuple[PromptSpec, ...]
    tasks: tuple[ClassificationTaskSpec, ...]
    needs_thumbnail: bool

    @property
    def n_rows(self) -> int:
        return len(self.prompts) + len(self.tasks)


@dataclass(frozen=True)
class LoadedItem:
    item: WorkItem
    image: Image.Image | None
    error: str | None
    #: The digest of the decoded pixels, stored with each of the sample's rows.
    image_sha256: str | None = None


@dataclass
class BatchRows:
    generations: list[dict[str, Any]] = field(default_factory=list)
    classifications: list[dict[str, Any]] = field(default_factory=list)
    thumbnails: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return len(self.generations) + len(self.classifications)

    def extend(self, other: BatchRows) -> None:
        self.generations += other.generations
        self.classifications += other.classifications
        self.thumbnails += other.thumbnails


def describe_exception(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def load_item(item: WorkItem) -> LoadedItem:
    try:
        image = item.sample.load_image()
        image.load()
        rgb = image.convert("RGB")
        # Here, in the prefetch threads, the pixels are decoded anyway: about 0.2 ms a 224 px
        # image, once per image whatever the number of prompts.
        return LoadedItem(item, rgb, None, image_sha256(rgb))
    except Exception as error:  # any decoding problem is this sample's, not the run's
        return LoadedItem(item, None, describe_exception(error))


class SystemicFailure(AuditError):
    """Every request failed before anything succeeded: the model or setup is broken."""


def _generation_request(prompt: PromptSpec, image: Image.Image) -> GenerationRequest:
    return GenerationRequest(image, prompt.text)


def _score_request(task: ClassificationTaskSpec, image: Image.Image) -> LabelScoreRequest:
    return LabelScoreRequest(
        image, task.prefix, tuple(task.continuation(text) for text in task.labels), task.context
    )


@dataclass(frozen=True)
class BatchPlan:
    """How much goes through the model at once."""

    #: Images per batch (``--batch-size``); label scoring runs this many requests per pass.
    images: int
    #: Prompts per image: a batch's images go through ``generate`` with all their prompts at
    #: once, as the card's 9B script did (16 images x 3 prompts per call), for fewer, fuller
    #: decoding steps. The backend halves the rows of a call that runs out of memory.
    prompts: int

    @property
    def generation_rows(self) -> int:
        return self.images * max(1, self.prompts)


#: Images and prompts (and tasks) of a run's first batch that the fast-path self-check uses.
CHECK_IMAGES = CHECK_SPECS = 2


class BatchExecutor:
    """Turns loaded items into stored rows with one backend."""

    def __init__(
        self,
        backend: Backend,
        spec: ProbeSpec,
        settings: GenerationSettings,
        batch: BatchPlan,
        model_id: str,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.settings = settings
        self.batch = batch
        self.model_id = model_id
        self.any_success = False

    def check_fast_paths(self, batch: Sequence[LoadedItem]) -> list[str] | None:
        """The backend's fast-path self-check on a few of ``batch``'s images, prompts and tasks;
        its lines for the user, or ``None`` when no image of ``batch`` loaded (not checked)."""
        images = [loaded.image for loaded in batch if loaded.image is not None][:CHECK_IMAGES]
        if not images:
            return None
        return self.backend.check_fast_paths(
            [_generation_request(p, i) for i in images for p in self.spec.prompts[:CHECK_SPECS]],
            [_score_request(t, i) for i in images for t in self.spec.classification[:CHECK_SPECS]],
            self.settings,
            batch_size=self.batch.images,
        )

    def run(self, batch: Sequence[LoadedItem]) -> BatchRows:
        rows = BatchRows()
        for loaded in batch:
            if loaded.image is not None and loaded.item.needs_thumbnail:
                rows.thumbnails.append(
                    {
                        "sample_id": loaded.item.sample.sample_id,
                        "jpeg": thumbnail_jpeg(loaded.image),
                    }
                )
        rows.generations += self._generate(batch)
        rows.classifications += self._classify(batch)
        return rows

    # -- one backend call per kind of request ------------------------------------------------
    def _in_one_call(
        self,
        specs: Sequence[Spec],
        batch: Sequence[LoadedItem],
        wanted: Callable[[Spec, WorkItem], bool],
        request_of: Callable[[Spec, Image.Image], Request],
        call: Callable[[list[Request]], list[Result]],
        row_of: Callable[[Sample, Spec, Result | str | None], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Every (spec, image) request of the batch in one backend call, so the backend can
        encode each image once and share its prompt prefix; one row per request still to do."""
        # Image by image, each with all its prompts, as the card's script ordered its batches.
        todo = [(spec, loaded) for loaded in batch for spec in specs if wanted(spec, loaded.item)]
        ok = [(spec, loaded) for spec, loaded in todo if loaded.image is not None]
        results = self._call(call, [request_of(spec, loaded.image) for spec, loaded in ok])  # type: ignore[arg-type]
        by_key = {
            (spec.id, loaded.item.sample.sample_id): result
            for (spec, loaded), result in zip(ok, results, strict=False)
        }
        return [
            {
                **row_of(
                    loaded.item.sample,
                    spec,
                    by_key.get((spec.id, loaded.item.sample.sample_id), loaded.error),
                ),
                IMAGE_HASH: loaded.image_sha256,
            }
            for spec, loaded in todo
        ]

    # -- generation ------------------------------------------------------------------------
    def _generate(self, batch: Sequence[LoadedItem]) -> list[dict[str, Any]]:
        return self._in_one_call(
            self.spec.prompts,
            batch,
            lambda prompt, item: prompt in item.prompts,
            _generation_request,
            lambda requests: self.backend.generate(
                requests, self.settings, batch_size=self.batch.generation_rows
            ),
            self._generation_row,
        )

    def _generation_row(
        self, sample: Sample, prompt: PromptSpec, result: Generation | str | None
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "sample_id": sample.sample_id,
            "prompt_id": prompt.id,
            "model_id": self.model_id,
            **{axis: str(value) for axis, value in sample.groups.items()},
            "prompt": prompt.text,
        }
        if isinstance(result, Generation) and result.finish_reason == "error":
            result = result.error or "the backend gave no reason"
        if isinstance(result, Generation):
            return {
                **row,
                "generation": result.text,
                "n_new_tokens": result.n_new_tokens,
                "finish_reason": result.finish_reason,
                "error": None,
            }
        return {
            **row,
            "generation": None,
            "n_new_tokens": 0,
            "finish_reason": "error",
            "error": result or "unknown error",
        }

    # -- classification --------------------------------------------------------------------
    def _classify(self, batch: Sequence[LoadedItem]) -> list[dict[str, Any]]:
        return self._in_one_call(
            self.spec.classification,
            batch,
            lambda task, item: task in item.tasks,
            _score_request,
            lambda requests: self.backend.score_labels(requests, batch_size=self.batch.images),
            self._classification_row,
        )

    def _classification_row(
        self, sample: Sample, task: ClassificationTaskSpec, result: LabelScores | str | None
    ) -> dict[str, Any]:
        target = str(sample.groups[task.target])
        row: dict[str, Any] = {
            "sample_id": sample.sample_id,
            "task_id": task.id,
            "model_id": self.model_id,
            **{axis: str(value) for axis, value in sample.groups.items()},
            "target": target,
        }
        values = list(task.labels.values())
        if isinstance(result, LabelScores) and result.error:
            result = result.error
        if not isinstance(result, LabelScores):
            return {**row, "prediction": None, "correct": None, "error": result or "unknown error"}
        if result.method is not None:
            row["scoring_method"] = result.method
        if result.method == "choice":  # no scores: the label the model named, or none (invalid)
            chosen = None if result.chosen is None else values[result.chosen]
            row.update(prediction=chosen, correct=chosen == target, answer=result.answer)
            return {**row, "error": None}
        best = max(range(len(values)), key=lambda i: result.logprob_sums[i])
        row.update(prediction=values[best], correct=values[best] == target, error=None)
        for value, score, count in zip(values, result.logprob_sums, result.n_tokens, strict=False):
            row[f"score_{value}"] = float(score)
            row[f"n_tokens_{value}"] = int(count)
        return row

    # -- failure handling --------------------------------------------------------------------
    def _call(
        self, call: Callable[[list[Request]], list[Result]], requests: list[Request]
    ) -> list[Result | str]:
        """The whole batch at once; if it fails, one request at a time, failures as text."""
        if not requests:
            return []
        try:
            results: list[Result | str] = list(call(requests))
        except AuditError:  # the backend knows the setup is broken (an endpoint refused us)
            raise
        except Exception:  # retried one by one below, so a bad request cannot sink its batch
            results = []
            for request in requests:
                try:
                    results.append(call([request])[0])
                except Exception as error:
                    results.append(describe_exception(error))
            if all(isinstance(r, str) for r in results) and not self.any_success:
                raise SystemicFailure(
                    describe_systemic_failure(str(results[0]), self.backend, self.model_id)
                ) from None
        self.any_success = self.any_success or any(not isinstance(r, str) for r in results)
        return results


def describe_systemic_failure(first_error: str, backend: Backend, model_id: str) -> str:
    """What the user reads when every request of the first batch failed: the error, the model
    and library versions, and what to try."""
    import torch

    info = backend.info()
    record = backend.fast_path_record()
    transformers_version = record.get("transformers") or info.extra.get("transformers_version")
    fast_on = [name for name, state in record.get("paths", {}).items() if state.get("on")]
    lines = [
        "every request of the first batch failed, so the run stopped (nothing was stored for it).",
        f"  first error: {first_error}",
        f"  model: {model_id} (type '{info.model_type}', backend {info.backend}, {info.dtype} on "
        f"{info.device}); transformers {transformers_version or '?'}, torch {torch.__version__}",
    ]
    tries = []
    if fast_on:
        tries.append(
            "--no-fast-paths (transformers' plain path only; fast paths on: "
            + ", ".join(fast_on)
            + ")"
        )
    tries.append(
        f"the tested versions (transformers {' or '.join(VERIFIED_TRANSFORMERS)}; "
        "requirements.lock pins every package: pip install -c requirements.lock -e .)"
    )
    lines.append("  try: " + "; or ".join(tries))
    return "\n".join(lines)


def batched(items: Iterator[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    batch: list[WorkItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
