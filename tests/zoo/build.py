"""Tiny random-weight checkpoints of the VLM families model teams ship, saved like real ones.

Each is a real transformers model class saved with ``save_pretrained`` beside its processor,
the family's published chat template (``tests/zoo/templates/``) and, where the npm registry has
it, the family's real tokenizer cut to a small vocabulary (``npm_tokenizers.py``). Families whose
processor holds a video processor get the ``video_preprocessor_config.json`` real checkpoints
have, so loading them takes the same path as a hub checkpoint. A random model ignores its
image unless it is made to see it: the initialiser range is large, weights the library starts
at zero (Gemma 3's projection norm, mllama's cross-attention gates, InternVL's embeddings) are
set, and embeddings are untied (tied random Gemma embeddings repeat one token).

``python tests/zoo/build.py OUT [MODEL_TYPE ...]`` builds them into OUT (all when none named).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zoo.npm_tokenizers import real_tokenizer
else:
    from .npm_tokenizers import real_tokenizer

TEMPLATES = Path(__file__).with_name("templates")
#: Bump when a change here changes what gets built.
BUILDER_VERSION = 3

INIT_RANGE = 0.3


@dataclass(frozen=True)
class Dims:
    """The shapes of one size: ``tiny`` for the tests, ``small`` for the benchmarks."""

    hidden: int
    layers: int
    heads: int
    vision_hidden: int
    vision_layers: int
    #: Gemma 3's image side and tokens per image (its real model: 896 px, 256 tokens).
    gemma_image_px: int
    gemma_image_tokens: int
    #: Sliding-window layers' window (Gemma 3, Aya Vision): shorter than the tests' prompts.
    sliding_window: int

    def layer_types(self) -> list[str]:
        """Sliding-window layers, then one full-attention layer (Gemma 3's pattern, shorter)."""
        return ["sliding_attention"] * (self.layers - 1) + ["full_attention"]

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SIZES = {
    "tiny": Dims(64, 2, 4, 32, 2, 56, 4, 16),
    "small": Dims(256, 4, 4, 128, 4, 224, 64, 512),
}


@dataclass(frozen=True)
class Family:
    """How to build one ``config.model_type``."""

    model_type: str
    #: The hub checkpoint whose layout and template the tiny copy follows.
    mirrors: str
    #: The npm tokenizer package (``None``: a small BPE trained here, with the family's
    #: special tokens).
    tokenizer: str | None
    build: Callable[[Any, Dims], tuple[Any, Any, Any]]
    #: The processor holds a video processor (needs torchvision in transformers 5).
    video: bool = False
    #: Special tokens the family's tokenizer names (``tokenizer.start_image_token``...).
    named_tokens: tuple[tuple[str, str], ...] = ()


def _text(tokenizer: Any, dims: Dims, **extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": dims.hidden,
        "intermediate_size": 2 * dims.hidden,
        "num_hidden_layers": dims.layers,
        "num_attention_heads": dims.heads,
        "num_key_value_heads": 2,
        "head_dim": dims.head_dim,
        "max_position_embeddings": 4096,
        "initializer_range": INIT_RANGE,
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **extra,
    }


def _vision(dims: Dims, **extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": dims.vision_hidden,
        "intermediate_size": 2 * dims.vision_hidden,
        "num_hidden_layers": dims.vision_layers,
        "num_attention_heads": 2,
        "initializer_range": INIT_RANGE,
        **extra,
    }


def _template(model_type: str) -> str:
    return (TEMPLATES / f"{model_type}.jinja").read_text(encoding="utf-8")


def _add_tokens(tokenizer: Any, tokens: tuple[str, ...]) -> None:
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    assert tokenizer.unk_token_id not in ids or tokenizer.unk_token is None, tokens
    return list(ids)


# -- the Qwen-VL family -----------------------------------------------------------------------
def _qwen_image_processor(patch: int) -> Any:
    from transformers import Qwen2VLImageProcessorPil

    # Images are resized to a multiple of patch x merge (2): 2x2 to 3x4 merged tokens here,
    # so images of different sizes give different numbers of image tokens, as in the real model.
    unit = patch * 2
    return Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=(2 * unit) ** 2,
        max_pixels=(3 * unit) * (4 * unit),
    )


def _qwen_ids(tokenizer: Any) -> dict[str, int]:
    image, video, start, end = _ids(
        tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    return {
        "image_token_id": image,
        "video_token_id": video,
        "vision_start_token_id": start,
        "vision_end_token_id": end,
    }


def _mrope() -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}


def _qwen(
    prefix: str, model_type: str, vision: dict[str, Any], out_key: str, patch: int, **rope: Any
) -> Callable[[Any, Dims], tuple[Any, Any, Any]]:
    """A builder of one Qwen-VL generation (``prefix``: its transformers class names' start;
    ``out_key``: its vision config's key for the width it hands the text model)."""

    def build(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
        import transformers

        config = getattr(transformers, f"{prefix}Config")(
            text_config=_text(tokenizer, dims, rope_parameters={**_mrope(), **rope}),
            vision_config={
                "depth": 2,
                "num_heads": 2,
                "patch_size": patch,
                "initializer_range": INIT_RANGE,
                **vision,
                out_key: dims.hidden,
            },
            tie_word_embeddings=False,
            **_qwen_ids(tokenizer),
        )
        processor = _image_only(
            getattr(transformers, f"{prefix}Processor"),
            _qwen_image_processor(patch),
            tokenizer,
            _template(model_type),
        )
        return processor, config, getattr(transformers, f"{prefix}ForConditionalGeneration")

    return build


_qwen2_vl = _qwen(
    "Qwen2VL", "qwen2_vl", {"embed_dim": 32, "mlp_ratio": 2}, out_key="hidden_size", patch=14
)
_qwen2_5_vl = _qwen(
    "Qwen2_5_VL",
    "qwen2_5_vl",
    {
        "hidden_size": 32,
        "intermediate_size": 64,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    },
    out_key="out_hidden_size",
    patch=14,
)
_qwen3_vl = _qwen(
    "Qwen3VL",
    "qwen3_vl",
    {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": [0],
    },
    out_key="out_hidden_size",
    patch=16,
    mrope_interleaved=True,
)


# -- LLaVA ------------------------------------------------------------------------------------
def _clip(dims: Dims, image_px: int) -> dict[str, Any]:
    return {
        **_vision(dims, image_size=image_px, patch_size=14, projection_dim=32),
        "model_type": "clip_vision_model",
    }


def _siglip(dims: Dims, image_px: int) -> dict[str, Any]:
    return {
        **_vision(dims, image_size=image_px, patch_size=14),
        "model_type": "siglip_vision_model",
    }


_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]


def _llava_1(prefix: str, model_type: str, text_type: str, **extra: Any) -> Any:
    """A builder of LLaVA 1.5 or LLaVA-NeXT (``prefix``: the transformers class names' start;
    ``extra``: their config's and image processor's anyres grid)."""

    def build(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
        import transformers

        _add_tokens(tokenizer, ("<image>", "<pad>"))
        tokenizer.pad_token = "<pad>"
        image_px = 28
        config = getattr(transformers, f"{prefix}Config")(
            vision_config=_clip(dims, image_px),
            text_config={**_text(tokenizer, dims), "model_type": text_type},
            image_token_index=_ids(tokenizer, "<image>")[0],
            image_seq_length=(image_px // 14) ** 2,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            tie_word_embeddings=False,
            **extra,
        )
        image_processor_class = (
            transformers.LlavaNextImageProcessorPil if extra else transformers.CLIPImageProcessorPil
        )
        image_processor = image_processor_class(
            size={"shortest_edge": image_px},
            crop_size={"height": image_px, "width": image_px},
            **extra,
        )
        processor = getattr(transformers, f"{prefix}Processor")(
            image_processor,
            tokenizer,
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=_template(model_type),
        )
        return processor, config, getattr(transformers, f"{prefix}ForConditionalGeneration")

    return build


_llava = _llava_1("Llava", "llava", "llama")
_llava_next = _llava_1("LlavaNext", "llava_next", "mistral", image_grid_pinpoints=_PINPOINTS)


def _llava_onevision(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    _add_tokens(tokenizer, ("<image>", "<video>"))
    image_px = 28
    config = LlavaOnevisionConfig(
        vision_config=_siglip(dims, image_px),
        text_config={**_text(tokenizer, dims), "model_type": "qwen2"},
        image_token_index=_ids(tokenizer, "<image>")[0],
        video_token_index=_ids(tokenizer, "<video>")[0],
        image_grid_pinpoints=_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_px, "width": image_px}, image_grid_pinpoints=_PINPOINTS
    )
    processor = _image_only(
        LlavaOnevisionProcessor,
        image_processor,
        tokenizer,
        _template("llava_onevision"),
        num_image_tokens=(image_px // 14) ** 2,
        vision_feature_select_strategy="full",
    )
    return processor, config, LlavaOnevisionForConditionalGeneration


# -- Gemma 3, PaliGemma ---------------------------------------------------------------------------
def _gemma3(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    image_px = dims.gemma_image_px
    boi, eoi, image = _ids(tokenizer, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    config = Gemma3Config(
        text_config={
            **_text(tokenizer, dims),
            "model_type": "gemma3_text",
            "sliding_window": dims.sliding_window,
            "layer_types": dims.layer_types(),
            "query_pre_attn_scalar": dims.head_dim,
        },
        vision_config=_siglip(dims, image_px),
        mm_tokens_per_image=dims.gemma_image_tokens,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
        initializer_range=INIT_RANGE,
        tie_word_embeddings=False,
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": image_px, "width": image_px})
    processor = Gemma3Processor(
        image_processor,
        tokenizer,
        chat_template=_template("gemma3"),
        image_seq_length=dims.gemma_image_tokens,
    )
    return processor, config, Gemma3ForConditionalGeneration


def _paligemma(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    _add_tokens(tokenizer, ("<image>",))
    image_px = 28
    image_processor = SiglipImageProcessorPil(size={"height": image_px, "width": image_px})
    image_processor.image_seq_length = (image_px // 14) ** 2
    processor = PaliGemmaProcessor(image_processor, tokenizer)
    tokenizer = processor.tokenizer  # the processor adds its location and segment tokens
    config = PaliGemmaConfig(
        vision_config={**_siglip(dims, image_px), "projection_dim": dims.hidden},
        text_config={**_text(tokenizer, dims), "model_type": "gemma", "vocab_size": len(tokenizer)},
        image_token_index=_ids(tokenizer, "<image>")[0],
        projection_dim=dims.hidden,
        hidden_size=dims.hidden,
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
    )
    return processor, config, PaliGemmaForConditionalGeneration


# -- Llama 3.2 Vision ----------------------------------------------------------------------------
def _mllama(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
    )

    _add_tokens(tokenizer, ("<|image|>",))
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    image_px = 28
    config = MllamaConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "vision_output_dim": 64,
            "intermediate_layers_indices": [0],
            "image_size": image_px,
            "patch_size": 14,
            "max_num_tiles": 4,
            "initializer_range": INIT_RANGE,
        },
        text_config={
            **_text(tokenizer, dims),
            "num_hidden_layers": 3,
            "cross_attention_layers": [1],
            "model_type": "mllama_text_model",
        },
        image_token_index=_ids(tokenizer, "<|image|>")[0],
    )
    image_processor = MllamaImageProcessorPil(
        size={"height": image_px, "width": image_px}, max_image_tiles=4
    )
    processor = MllamaProcessor(image_processor, tokenizer, chat_template=_template("mllama"))
    return processor, config, MllamaForConditionalGeneration


# -- InternVL, SmolVLM, Mistral 3, Aya Vision ------------------------------------------------------
def _internvl(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )

    image_px = 28
    config = InternVLConfig(
        vision_config={
            **_vision(dims, image_size=[image_px, image_px], patch_size=[14, 14]),
            "model_type": "internvl_vision",
        },
        text_config={**_text(tokenizer, dims), "model_type": "qwen2"},
        image_token_id=_ids(tokenizer, "<IMG_CONTEXT>")[0],
        image_seq_length=1,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_px, "width": image_px},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
    )
    processor = _image_only(
        InternVLProcessor, image_processor, tokenizer, _template("internvl"), image_seq_length=1
    )
    return processor, config, InternVLForConditionalGeneration


def _smolvlm(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
    )

    image_px, patch_px, scale = 32, 8, 2
    config = SmolVLMConfig(
        vision_config={**_vision(dims, image_size=image_px, patch_size=patch_px)},
        text_config={**_text(tokenizer, dims), "model_type": "llama"},
        image_token_id=_ids(tokenizer, "<image>")[0],
        scale_factor=scale,
        tie_word_embeddings=False,
    )
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 2 * image_px},
        max_image_size={"longest_edge": image_px},
        do_image_splitting=True,
    )
    processor = _image_only(
        SmolVLMProcessor,
        image_processor,
        tokenizer,
        _template("smolvlm"),
        image_seq_len=(image_px // patch_px) ** 2 // scale**2,
    )
    return processor, config, SmolVLMForConditionalGeneration


def _mistral3(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        PixtralImageProcessorPil,
    )

    from audit.backends.hf.pixtral_processor import ImageOnlyPixtralProcessor

    patch, merge = 8, 2
    config = Mistral3Config(
        vision_config={
            **_vision(dims, image_size=64, patch_size=patch, head_dim=16),
            "model_type": "pixtral",
        },
        text_config={**_text(tokenizer, dims), "model_type": "mistral"},
        image_token_index=_ids(tokenizer, "[IMG]")[0],
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": 48}, patch_size={"height": patch, "width": patch}
    )
    processor = ImageOnlyPixtralProcessor(
        image_processor,
        tokenizer,
        patch_size=patch,
        spatial_merge_size=merge,
        chat_template=_template("mistral3"),
    )
    processor.saved_settings = {"patch_size": patch, "spatial_merge_size": merge}
    return processor, config, Mistral3ForConditionalGeneration


def _aya_vision(tokenizer: Any, dims: Dims) -> tuple[Any, Any, Any]:
    from transformers import (
        AyaVisionConfig,
        AyaVisionForConditionalGeneration,
        AyaVisionProcessor,
        GotOcr2ImageProcessorPil,
    )

    tokens = (
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
    )
    _add_tokens(tokenizer, tokens)
    image_px = 28
    config = AyaVisionConfig(
        vision_config=_siglip(dims, image_px),
        text_config={
            **_text(tokenizer, dims),
            "model_type": "cohere2",
            "sliding_window": dims.sliding_window,
            "layer_types": dims.layer_types(),
        },
        image_token_index=_ids(tokenizer, "<|IMG_PATCH|>")[0],
        downsample_factor=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_px, "width": image_px},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
    )
    processor = AyaVisionProcessor(
        image_processor,
        tokenizer,
        patch_size=14,
        img_size=image_px,
        downsample_factor=2,
        chat_template=_template("aya_vision"),
    )
    return processor, config, AyaVisionForConditionalGeneration


# -- building ---------------------------------------------------------------------------------
def _image_only(cls: Any, image_processor: Any, tokenizer: Any, template: str, **kw: Any) -> Any:
    """``cls`` with no video processor (transformers' needs torchvision; probes send images)."""

    def allow_no_video(self: Any, name: str, argument: Any) -> Any:
        if argument is None and name == "video_processor":
            return None
        return cls.check_argument_for_proper_class(self, name, argument)

    image_only = type(cls.__name__, (cls,), {"check_argument_for_proper_class": allow_no_video})
    processor = image_only(image_processor, tokenizer, None, chat_template=template, **kw)
    processor.saved_settings = kw
    return processor


def _trained_tokenizer(model_type: str) -> Any:
    """SmolVLM's SmolLM2 vocabulary is on no registry: a small BPE with its special tokens."""
    from audit.demo.tiny_models import IDEFICS3_TOKENS, _train_tokenizer

    tokenizer = _train_tokenizer(
        bos="<|im_start|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk="<unk>",
        extra=("<fake_token_around_image>", "<image>", "<end_of_utterance>", *IDEFICS3_TOKENS),
        vocab_size=1200,
    )
    return tokenizer


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct", "qwen2_5", _qwen2_vl, video=True),
        Family("qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5", _qwen2_5_vl, video=True),
        Family("qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct", "qwen3", _qwen3_vl, video=True),
        Family("llava", "llava-hf/llava-1.5-7b-hf", "llama2", _llava),
        Family("llava_next", "llava-hf/llava-v1.6-mistral-7b-hf", "llama2", _llava_next),
        Family(
            "llava_onevision",
            "llava-hf/llava-onevision-qwen2-7b-ov-hf",
            "qwen2_5",
            _llava_onevision,
            video=True,
        ),
        Family("gemma3", "google/gemma-3-4b-it", "gemma3", _gemma3),
        Family("paligemma", "google/paligemma2-3b-mix-224", "gemma", _paligemma),
        Family("mllama", "meta-llama/Llama-3.2-11B-Vision-Instruct", "llama3_2", _mllama),
        Family(
            "internvl",
            "OpenGVLab/InternVL3-1B-hf",
            "qwen2_5",
            _internvl,
            video=True,
            named_tokens=(
                ("start_image_token", "<img>"),
                ("end_image_token", "</img>"),
                ("context_image_token", "<IMG_CONTEXT>"),
                ("video_token", "<video>"),
            ),
        ),
        Family("smolvlm", "HuggingFaceTB/SmolVLM-256M-Instruct", None, _smolvlm, video=True),
        Family(
            "mistral3", "mistralai/Mistral-Small-3.1-24B-Instruct-2503", "mistral_nemo", _mistral3
        ),
        Family("aya_vision", "CohereLabs/aya-vision-8b", "aya_expanse", _aya_vision),
    )
}

#: Mistral Small 3.1's tekken names the slots that Mistral Nemo's leaves generic.
_RENAMES = {
    "mistral_nemo": {
        "<pad>": "[IMG]",
        "[PREFIX]": "<pad>",
        "[MIDDLE]": "[IMG_BREAK]",
        "[SUFFIX]": "[IMG_END]",
        "<SPECIAL_14>": "[PREFIX]",
        "<SPECIAL_15>": "[MIDDLE]",
        "<SPECIAL_16>": "[SUFFIX]",
        "<SPECIAL_17>": "[SYSTEM_PROMPT]",
        "<SPECIAL_18>": "[/SYSTEM_PROMPT]",
    }
}


def _tokenizer(family: Family) -> Any:
    from transformers import AutoTokenizer

    if family.tokenizer is None:
        return _trained_tokenizer(family.model_type)
    folder = real_tokenizer(family.tokenizer, renames=_RENAMES.get(family.tokenizer))
    named = dict(family.named_tokens)
    return AutoTokenizer.from_pretrained(
        folder, **({"extra_special_tokens": named} if named else {})
    )


def build_tiny_vlm(model_type: str, out_dir: Path, *, seed: int = 0, size: str = "tiny") -> Path:
    """Build the random-weight checkpoint of ``model_type`` into ``out_dir`` (reused when
    already built by this builder version); ``size`` ``tiny`` (hidden 64, 2 layers: the tests)
    or ``small`` (hidden 256, 4 layers: the benchmarks). Returns ``out_dir``."""
    import torch
    import transformers

    from audit.demo.tiny_models import build_once

    family = FAMILIES[model_type]
    marker = {
        "model_type": model_type,
        "seed": seed,
        "size": size,
        "builder_version": BUILDER_VERSION,
        "transformers": transformers.__version__,
    }

    def build(folder: Path) -> None:
        processor, config, model_class = family.build(_tokenizer(family), SIZES[size])
        config.audit_random_weights = True  # runs and reports of it say its weights are random
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_class(config)
            _open_zero_initialised(model)
        model.save_pretrained(folder)
        if hasattr(processor, "saved_settings"):
            _save_image_only(folder, processor, video=family.video)
        else:
            processor.save_pretrained(folder)

    return build_once(out_dir, marker, build)


def _open_zero_initialised(model: Any) -> None:
    """Weights a library starts at zero gate the image out of a random model: gates (mllama's
    cross-attention) are opened, other all-zero weights (Gemma 3's projection) drawn at random.
    Biases and norms stay as they are (Gemma's norms are zero by design: they scale 1 + w)."""
    import torch

    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("bias") or "norm" in name or tensor.abs().sum():
                continue
            if "gate" in name.rsplit(".", 1)[-1]:
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, INIT_RANGE)


def _save_image_only(folder: Path, processor: Any, *, video: bool) -> None:
    """Save a processor built without its video processor the way transformers saves the whole
    one: tokenizer files, ``chat_template.jinja`` and ``processor_config.json`` with the image
    processor's settings and, for a family that takes video, the video processor's (the image
    settings under the family's video processor class, which needs torchvision to be built)."""
    processor.tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
    image = processor.image_processor.to_dict()
    name = type(processor).__name__
    settings: dict[str, Any] = {"image_processor": image, **processor.saved_settings}
    if video:
        settings["video_processor"] = {
            **{k: v for k, v in image.items() if k != "image_processor_type"},
            "video_processor_type": name.replace("Processor", "VideoProcessor"),
        }
    settings["processor_class"] = "PixtralProcessor" if name.startswith("ImageOnly") else name
    (folder / "processor_config.json").write_text(
        json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8"
    )


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    out, names = Path(argv[0]), argv[1:] or list(FAMILIES)
    for name in names:
        print(build_tiny_vlm(name, out / name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
