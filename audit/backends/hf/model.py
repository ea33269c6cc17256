"""What every transformers-based backend shares: lazy loading, batched generation, scoring.

A family module (``idefics``, ``chat``) only says how a prompt is laid out and encoded; the
batching, sorting, out-of-memory back-off, decoding and scoring live here once.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from typing import Any

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
    ScoringContext,
)
from audit.backends.batching import BatchCeiling, length_order, map_in_batches, restore_order
from audit.backends.hf.checkpoint import (
    Checkpoint,
    LoadedModel,
    choose_device,
    choose_dtype,
    load_checkpoint,
)
from audit.backends.hf.fast.decoding import Decoding, run_generate
from audit.backends.hf.fast.image_features import FeatureCache
from audit.backends.hf.fast.label_prefix import score_shared_prefix
from audit.backends.hf.fast.policy import FastPathPolicy
from audit.backends.hf.fast.self_check import CheckRequests, check_fast_paths
from audit.backends.hf.fast.shared_prefix import PromptSplit, generate_with_shared_prefixes
from audit.backends.hf.generation import TokenRoles, ensure_pad_token, token_roles
from audit.backends.hf.prompt import Prompt, stand_in_image
from audit.backends.hf.scoring import (
    LabelSpan,
    ScoringMethod,
    find_label_span,
    prepare_jobs,
    score_plain,
)

logger = logging.getLogger(__name__)


@contextmanager
def _seeded(seed: int, device: str) -> Iterator[None]:
    """Seed sampling without disturbing the caller's random state."""
    import torch

    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _stand_ins(n: int) -> tuple[Image.Image, ...]:
    return tuple(stand_in_image() for _ in range(n))


class HFBackend(Backend):
    """A transformers image-text model; subclasses lay out and encode prompts.

    Speedups that reach into transformers internals are used where ``fast_paths`` says so
    (``audit.backends.hf.fast.policy``); with all of them off this is transformers' plain path.
    """

    def __init__(
        self, checkpoint: Checkpoint, preamble: Preamble | Sequence[PreamblePart] = ()
    ) -> None:
        self._checkpoint = checkpoint
        self._preamble = Preamble.of(preamble)
        self._loaded: LoadedModel | None = None
        self._roles: TokenRoles | None = None
        self._generate_ceiling = BatchCeiling()
        self._score_ceiling = BatchCeiling()
        self.fast_paths = FastPathPolicy(checkpoint.model_type, checkpoint.spec.fast_paths)
        #: Token ids of the text after a prompt's image (``None``: that prompt does not split).
        self._suffix_ids: dict[tuple[str, bool], tuple[int, ...] | None] = {}
        self._label_spans: dict[tuple[Any, ...], LabelSpan] = {}

    # -- loading -------------------------------------------------------------------------
    def _load(self) -> LoadedModel:
        if self._loaded is None:
            loaded = load_checkpoint(self._checkpoint)
            self._check_processor(loaded.processor)
            ensure_pad_token(loaded.processor.tokenizer)
            self._loaded = loaded
            roles = token_roles(loaded.processor, loaded.model)
            image_ids = self.image_token_ids() - set(roles.eos_ids)
            self._roles = replace(roles, banned_ids=tuple(sorted({*roles.banned_ids, *image_ids})))
        return self._loaded

    def load(self) -> None:
        self._load()

    def _check_processor(self, processor: Any) -> None:
        """Refuse a processor this family cannot drive (raise ``ModelLoadError``)."""

    @property
    def model(self) -> Any:
        """The loaded transformers model (loads it on first access)."""
        return self._load().model

    @property
    def processor(self) -> Any:
        """The loaded processor (loads it on first access)."""
        return self._load().processor

    @property
    def roles(self) -> TokenRoles:
        """Stop, banned and pad token ids used in generation."""
        self._load()
        assert self._roles is not None
        return self._roles

    def check_fast_paths(
        self,
        generation: Sequence[GenerationRequest],
        scoring: Sequence[LabelScoreRequest],
        settings: GenerationSettings,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[str]:
        import transformers

        loaded = self._load()
        return check_fast_paths(
            self,
            CheckRequests(tuple(generation), tuple(scoring), settings, batch_size),
            dtype=str(loaded.dtype).removeprefix("torch."),
            transformers_version=transformers.__version__,
        )

    def fast_path_record(self) -> dict[str, Any]:
        import transformers

        return {"transformers": transformers.__version__, "paths": self.fast_paths.record()}

    def info(self) -> BackendInfo:
        import transformers

        spec, loaded = self._checkpoint.spec, self._loaded
        extra: dict[str, Any] = {"transformers_version": transformers.__version__}
        if getattr(self._checkpoint.config, "audit_random_weights", False):
            extra["random_weights"] = True  # a model built by the demo: its text means nothing
        if loaded is None:  # what loading will choose; the image processor is known once loaded
            device = choose_device(spec.device)
            dtype, image_processor = choose_dtype(spec.dtype, device), ""
        else:
            device, dtype = loaded.device, loaded.dtype
            image_processor = type(loaded.processor.image_processor).__name__
            if spec.device_map:
                # accelerate leaves no map when everything fits one device; "" is the whole model.
                device_map = getattr(loaded.model, "hf_device_map", None) or {"": loaded.device}
                extra["device_map"] = {str(k): str(v) for k, v in device_map.items()}
        return BackendInfo(
            backend=self.name,
            model_id=spec.id,
            model_type=self._checkpoint.model_type,
            revision=self._checkpoint.revision,
            dtype=str(dtype).removeprefix("torch."),
            device=device,
            image_processor=image_processor,
            extra=extra,
        )

    # -- family hooks --------------------------------------------------------------------
    @abstractmethod
    def generation_prompt(self, image: Image.Image, prompt: str) -> Prompt:
        """The preamble, the image and the open-ended prompt, ending where the answer starts."""

    @abstractmethod
    def scoring_prompt(self, image: Image.Image, answer: str, context: ScoringContext) -> Prompt:
        """``chat``: the preamble and the image in the user turn, then ``answer`` as the answer's
        start; ``card``: the image, then ``answer``, nothing else (no BOS)."""

    @abstractmethod
    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any:
        """Processor output for a batch, padded on ``padding_side``, on the model's device."""

    def with_shared_images(
        self, prompts: Sequence[Prompt], inputs: Any, cache: FeatureCache
    ) -> Any:
        """``inputs`` with image features taken from (and added to) ``cache``; by default as is."""
        return inputs

    def cut_after_image(self, prompt: Prompt) -> tuple[Prompt, str] | None:
        """``prompt`` up to its last image placeholder, and the text after it; ``None`` where the
        family's prompts do not cut there (the default)."""
        return None

    def decoding(self) -> AbstractContextManager[Any]:
        """Context held around each ``generate`` call of a batch (nothing by default)."""
        return nullcontext()

    def text_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of ``prompt.text`` with image placeholders left unexpanded."""
        tokenizer = self.processor.tokenizer
        return list(tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids)

    def continuation_inputs(
        self, prefix_inputs: Any, prefix_output: Any, rows: Any, width: int
    ) -> dict[str, Any]:
        """Extra model inputs for label tokens run against a cached prefix (none by default)."""
        return {}

    def append_tokens(self, inputs: Any, token_ids: Sequence[int]) -> dict[str, Any]:
        """One encoded prompt followed by ``token_ids``, as ``generate`` would have fed them."""
        import torch

        inputs = dict(inputs)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        extra = torch.tensor([list(token_ids)], dtype=ids.dtype, device=ids.device)
        inputs["input_ids"] = torch.cat([ids, extra], dim=1)
        inputs["attention_mask"] = torch.cat([mask, mask.new_ones(extra.shape)], dim=1)
        return inputs

    def next_token_logprobs(self, request: GenerationRequest, token_ids: Sequence[int]) -> Any:
        """transformers' plain forward pass, teacher forced: the log-probability of every
        vocabulary token after ``request``'s generation prompt and ``token_ids`` (to tell a
        near-tie that float arithmetic may break either way from a real difference)."""
        import torch

        prompt = self.generation_prompt(request.image, request.prompt)
        inputs = self.append_tokens(self.encode([prompt], "left"), token_ids)
        with torch.inference_mode():
            logits = self.model(**inputs, use_cache=False).logits[0, -1]
        return torch.log_softmax(logits.float(), dim=-1)

    def _to_model(self, inputs: Any) -> Any:
        loaded = self._load()
        return inputs.to(device=loaded.model.device, dtype=loaded.dtype)

    # -- the Backend interface -----------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        settings: GenerationSettings,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[Generation]:
        """Batched generation, longest prompts first, results in request order.

        Requests that carry the same image object share its vision features: each distinct
        image is encoded once per call (for the families whose ``with_shared_images`` does so).
        """
        loaded = self._load()
        roles = self.roles_for(settings)
        prompts = [self.generation_prompt(r.image, r.prompt) for r in requests]
        in_order = settings.order == "dataset"
        splits = None if in_order else self.shared_prefix_splits(prompts)
        if splits is not None:
            with _seeded(settings.seed, loaded.device):
                return generate_with_shared_prefixes(
                    self,
                    splits,
                    settings,
                    batch_size,
                    self._length_key,
                    self._generate_ceiling,
                    roles,
                )
        if in_order:
            order = list(range(len(prompts)))
        else:
            order = length_order([self._length_key(p) for p in prompts])
        # Lives for this call only: the prompts keep its images alive, so ids stay unique.
        cache: FeatureCache = {}

        def run_batch(batch: list[Prompt]) -> list[Generation]:
            inputs = self.encode(batch, "left")
            if self.fast_paths.on("image_features"):
                inputs = self.with_shared_images(batch, inputs, cache)
            with self.decoding():
                return run_generate(
                    loaded.model,
                    loaded.processor.tokenizer,
                    inputs,
                    settings,
                    roles,
                    self.decoding_fast_paths(),
                )

        with _seeded(settings.seed, loaded.device):
            results = map_in_batches(
                [prompts[i] for i in order], batch_size, run_batch, self._generate_ceiling
            )
        return restore_order(order, results)

    def check_settings(self, settings: GenerationSettings) -> None:
        self.roles_for(settings)

    def roles_for(self, settings: GenerationSettings) -> TokenRoles:
        """The stop tokens of ``settings`` added to the model's own."""
        if not settings.stop_tokens:
            return self.roles
        tokenizer = self.processor.tokenizer
        extra = set()
        for text in settings.stop_tokens:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(
                    f"generation.stop_tokens: {text!r} is {len(ids)} tokens for this model's "
                    f"tokenizer ({ids}); each stop token must be exactly one token"
                )
            extra.add(int(ids[0]))
        roles = self.roles
        return replace(
            roles,
            eos_ids=tuple(sorted(set(roles.eos_ids) | extra)),
            banned_ids=tuple(i for i in roles.banned_ids if i not in extra),
        )

    def decoding_fast_paths(self) -> Decoding:
        """The decoding fast paths ``generate`` calls use now."""
        return Decoding(
            reserve_cache=self.fast_paths.on("reserved_cache"),
            drop_finished=self.fast_paths.on("drop_finished"),
            pause_every_step=self.fast_paths.checking,
        )

    def shared_prefix_splits(self, prompts: Sequence[Prompt]) -> list[PromptSplit] | None:
        """Each prompt split after its image, where some prefix is shared and every prompt
        splits exactly; otherwise ``None`` (each prompt runs whole)."""
        if not self.fast_paths.on("image_prefix"):
            return None
        splits = []
        for prompt in prompts:
            split = self.split_prompt(prompt)
            if split is None:
                return None
            splits.append(split)
        if len({s.prefix_key for s in splits}) == len(splits):
            return None
        return splits

    def split_prompt(self, prompt: Prompt) -> PromptSplit | None:
        """``prompt`` as its part up to the image and the token ids after it, or ``None``."""
        cut = self.cut_after_image(prompt)
        if cut is None:
            return None
        head, tail = cut
        key = (tail, prompt.add_special_tokens)
        if key not in self._suffix_ids:
            self._suffix_ids[key] = self._suffix_ids_of(prompt, head)
        suffix_ids = self._suffix_ids[key]
        return None if suffix_ids is None else PromptSplit(head, suffix_ids)

    def _suffix_ids_of(self, prompt: Prompt, head: Prompt) -> tuple[int, ...] | None:
        """The tokens the processor puts after ``head`` in ``prompt``, where ``prompt`` encodes
        as ``head`` then those tokens. Processors may respace text after an image (Idefics2
        puts a space after the closing image token), so they come from the processor itself:
        they depend on the text after the image only, and are found once per distinct text."""
        whole = self.encode([prompt], "left")["input_ids"][0].tolist()
        start = self.encode([head], "left")["input_ids"][0].tolist()
        if whole[: len(start)] == start and len(whole) > len(start):
            return tuple(whole[len(start) :])
        logger.warning(
            "the prompt %r does not encode as its part up to the image then the rest; "
            "prompts showing the same image are prefilled whole",
            prompt.text,
        )
        return None

    def image_token_ids(self) -> set[int]:
        """Special tokens the processor writes for an image, which the model must never
        generate (besides ``generation.token_roles``' names): those its encoding of one image
        and a text holds that the text's own tokens lack, and any video placeholder."""
        shown, bare = self.image_and_bare_text()
        if shown is None:
            return set()
        tokenizer = self.processor.tokenizer
        ids = set(self.encode([shown], "left")["input_ids"][0].tolist())
        ids -= set(tokenizer(bare, add_special_tokens=shown.add_special_tokens).input_ids)
        special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        video = getattr(self.processor, "video_token", None)
        if isinstance(video, str) and video in tokenizer.get_vocab():
            ids.add(tokenizer.convert_tokens_to_ids(video))
        return {i for i in ids if i in special}

    def image_and_bare_text(self) -> tuple[Prompt | None, str]:
        """A prompt showing one stand-in image and a text, and the same text with no image
        (``None``: the family's image tokens are all named in ``generation``)."""
        return None, ""

    def card_layout(self) -> dict[str, Any] | None:
        image_text = self.card_image_text()
        if image_text is None:
            return None
        prompt = self.scoring_prompt(stand_in_image(), "x", "card")
        ids = self.encode([prompt], "right")["input_ids"][0].tolist()
        bos = self.processor.tokenizer.bos_token_id
        return {"image": image_text, "bos": bos is not None and bos in ids}

    def card_image_text(self) -> str | None:
        """The text the image is given as in the card's context (``None``: this family cannot
        be shown an image and a text with nothing around them; its tasks are scored in a
        chat)."""
        return None

    def label_span(self, prefix: Prompt, full: Prompt) -> LabelSpan:
        """Where ``full``'s continuation of ``prefix`` sits in the processor's own encoding.

        Found once per distinct pair of texts, on a stand-in image: what a processor writes
        around the text (a BOS after the image, a newline or end of turn after the text) does
        not depend on the image, and the label comes after every image.
        """
        key = (prefix.text, prefix.answer, full.text, full.answer, len(full.images))
        span = self._label_spans.get(key)
        if span is None:
            ids = [
                self.encode([p.with_images(_stand_ins(len(p.images)))], "right")["input_ids"][0]
                for p in (prefix, full)
            ]
            span = find_label_span(ids[0].tolist(), ids[1].tolist())
            self._label_spans[key] = span
        return span

    def _length_key(self, prompt: Prompt) -> int:
        pixels = sum(image.width * image.height for image in prompt.images)
        # Text tokens first; image size breaks ties (Idefics3: more pixels, more tiles).
        return len(self.text_ids(prompt)) * 10**9 + min(pixels, 10**9 - 1)

    def score_labels(
        self,
        requests: Sequence[LabelScoreRequest],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        method: ScoringMethod = "auto",
    ) -> list[LabelScores]:
        """Summed log-likelihood of each continuation, and its token count.

        ``method="shared_prefix"`` prefills each prompt once and runs only the labels' tokens
        against its cache (``batch_size`` requests per pass); ``"plain"`` runs one full sequence
        per label (``batch_size`` sequences per pass). ``"auto"`` shares where the
        ``label_prefix`` fast path is on and is plain elsewhere.
        """
        self._load()
        if method == "auto":
            method = "shared_prefix" if self.fast_paths.on("label_prefix") else "plain"
        if method not in ("shared_prefix", "plain"):
            raise ValueError(f"unknown scoring method {method!r}")
        score = score_shared_prefix if method == "shared_prefix" else score_plain
        # Each context is encoded on its own: their prompts differ in whether a BOS is written.
        results: list[LabelScores | None] = [None] * len(requests)
        for context in dict.fromkeys(r.context for r in requests):
            indices = [i for i, r in enumerate(requests) if r.context == context]
            jobs = prepare_jobs(self, [requests[i] for i in indices])
            for i, scores in zip(
                indices, score(self, jobs, batch_size, self._score_ceiling), strict=True
            ):
                results[i] = scores
        return results  # type: ignore[return-value]
