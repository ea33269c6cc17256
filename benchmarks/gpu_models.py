"""The models benchmark 5 times, and their inputs: idefics-9b, Idefics2-8b and Idefics3-8B at
their published shapes (``scale="full"``) or shrunken (``"tiny"``), with random weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ARCHS = ("idefics", "idefics2", "idefics3")
SCALES = ("full", "tiny")

# The full FairFace probe (issue 5): validation split x the card's 3 prompts, and 2 + 7 + 9
# candidate labels per image for gender, race and age.
FAIRFACE_IMAGES = 10_954
FAIRFACE_PROMPTS = 3
FAIRFACE_LABEL_SEQUENCES = 197_172
GOAL_MIN = 30.0

#: Peak memory bandwidth in GB/s by device name, most specific first (vendors' data sheets).
PEAK_GBPS = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
)
# Parameters a decode step does not read: the image is encoded once, at prefill, and an input
# embedding is a row lookup, not a read of the table.
PREFILL_ONLY_MODULES = ("vision_model", "perceiver_resampler", "connector")
BOS, EOS, PAD = 1, 2, 0


@dataclass(frozen=True)
class Shape:
    """An architecture's dimensions at one scale."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int  # without the added image tokens
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    vision_px: int  # the vision config's image_size
    input_px: int  # side of the tiles the processor makes of a 224 px FairFace face
    patch_px: int
    resampler_depth: int
    latents: int
    resampler_heads: int
    resampler_head_dim: int
    cross_interval: int = 4


_CLIP_H = {"vision_width": 1280, "vision_layers": 32, "vision_heads": 16, "vision_mlp": 5120}
_SIGLIP = {"vision_width": 1152, "vision_layers": 27, "vision_heads": 16, "vision_mlp": 4304}
_RESAMPLER = {"latents": 64, "resampler_heads": 16, "resampler_head_dim": 96}
_DECODER_7B = {"hidden": 4096, "layers": 32, "heads": 32}
FULL_SHAPES = {
    "idefics": Shape(**_DECODER_7B, kv_heads=32, mlp=11008, vocab=32000, **_CLIP_H, vision_px=224,
                     input_px=224, patch_px=14, resampler_depth=6, **_RESAMPLER),
    # Idefics2's processor resizes a 224 px image up to its shortest edge, 378, with no split.
    "idefics2": Shape(**_DECODER_7B, kv_heads=8, mlp=14336, vocab=32000, **_SIGLIP, vision_px=980,
                      input_px=378, patch_px=14, resampler_depth=3, **_RESAMPLER),
    "idefics3": Shape(**_DECODER_7B, kv_heads=8, mlp=14336, vocab=128256, **_SIGLIP,
                      vision_px=364, input_px=364, patch_px=14, resampler_depth=0, latents=0,
                      resampler_heads=0, resampler_head_dim=0),
}  # fmt: skip
_TINY = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "mlp": 128, "vocab": 1000,
         "vision_width": 64, "vision_layers": 2, "vision_heads": 4, "vision_mlp": 128,
         "vision_px": 32, "input_px": 32, "patch_px": 8, "cross_interval": 2}  # fmt: skip
TINY_SHAPES = {
    arch: dataclasses.replace(
        shape, **_TINY, latents=min(shape.latents, 4),
        resampler_heads=min(shape.resampler_heads, 4),
        resampler_head_dim=min(shape.resampler_head_dim, 16),
        resampler_depth=min(shape.resampler_depth, 1),
    )
    for arch, shape in FULL_SHAPES.items()
}  # fmt: skip
# Like the full models: IDEFICS v1 has no grouped-query attention, and Idefics2 gets images
# smaller than its vision config's size.
TINY_SHAPES["idefics"] = dataclasses.replace(TINY_SHAPES["idefics"], kv_heads=4)
TINY_SHAPES["idefics2"] = dataclasses.replace(TINY_SHAPES["idefics2"], input_px=24)
# Idefics3's processor splits a 224 px face, upscaled to 4 x 364 px, into 4 x 4 tiles plus
# the whole image; 169 tokens per 364 px tile (pixel shuffle by 2 of 26 x 26 patches).
IDEFICS3_TILES = 17
IDEFICS3_SCALE_FACTOR = 2


def shape_of(arch: str, scale: str) -> Shape:
    """The dimensions of ``arch`` at ``scale`` (``full``: the published model; ``tiny``: CPU)."""
    return (FULL_SHAPES if scale == "full" else TINY_SHAPES)[arch]


def image_tokens_per_tile(arch: str, shape: Shape) -> int:
    """How many ``<image>`` tokens one image tile takes in the prompt."""
    if arch == "idefics":
        return 1  # v1 attends to the image through cross-attention, not in the sequence
    if arch == "idefics2":
        return shape.latents
    return (shape.vision_px // shape.patch_px) ** 2 // IDEFICS3_SCALE_FACTOR**2


def model_config(arch: str, scale: str) -> Any:
    """The transformers config of ``arch`` at ``scale``; 3 image tokens follow the vocabulary."""
    import transformers

    s = shape_of(arch, scale)
    vision = {"hidden_size": s.vision_width, "intermediate_size": s.vision_mlp,
              "num_hidden_layers": s.vision_layers, "num_attention_heads": s.vision_heads,
              "image_size": s.vision_px, "patch_size": s.patch_px}  # fmt: skip
    text = {"vocab_size": s.vocab + 3, "hidden_size": s.hidden, "intermediate_size": s.mlp,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads, "rms_norm_eps": 1e-5, "pad_token_id": PAD,
            "bos_token_id": BOS, "eos_token_id": EOS}  # fmt: skip
    resampler = {"resampler_n_latents": s.latents, "resampler_depth": s.resampler_depth,
                 "resampler_n_heads": s.resampler_heads,
                 "resampler_head_dim": s.resampler_head_dim}  # fmt: skip
    if arch == "idefics":
        vision["embed_dim"] = vision.pop("hidden_size")
        del text["num_key_value_heads"]
        return transformers.IdeficsConfig(
            **{**text, "vocab_size": s.vocab, "rms_norm_eps": 1e-6}, additional_vocab_size=3,
            cross_layer_interval=s.cross_interval, use_resampler=True, tie_word_embeddings=False,
            vision_config=vision, perceiver_config={"use_resampler": True, **resampler},
        )  # fmt: skip
    if arch == "idefics2":
        perceiver = {**resampler, "hidden_size": s.hidden, "num_key_value_heads": s.kv_heads // 2}
        return transformers.Idefics2Config(
            text_config={"model_type": "mistral", "sliding_window": 4096, **text},
            vision_config=vision, perceiver_config=perceiver, image_token_id=s.vocab + 1,
            tie_word_embeddings=False,
        )  # fmt: skip
    return transformers.Idefics3Config(
        text_config={"model_type": "llama", "rope_theta": 500_000.0, **text},
        vision_config=vision, image_token_id=s.vocab + 1, scale_factor=IDEFICS3_SCALE_FACTOR,
        pad_token_id=PAD, tie_word_embeddings=False,
    )  # fmt: skip


def build_model(arch: str, scale: str, device: str, dtype: Any) -> Any:
    """A random-weight model of ``arch`` created directly on ``device`` (``meta``: no memory)."""
    import torch
    import transformers

    model_class = {
        "idefics": transformers.IdeficsForVisionText2Text,
        "idefics2": transformers.Idefics2ForConditionalGeneration,
        "idefics3": transformers.Idefics3ForConditionalGeneration,
    }[arch]
    with torch.device(device):
        model = model_class._from_config(model_config(arch, scale), dtype=dtype)
    return model.eval()


def count_parameters(model: Any) -> int:
    """Number of parameters (works on the ``meta`` device)."""
    return sum(p.numel() for p in model.parameters())


def decode_weight_bytes(model: Any) -> int:
    """Bytes of the weights one decode step reads: all but the image encoder and the embeddings."""
    skipped = {id(p) for p in model.get_input_embeddings().parameters()}
    total = 0
    for name, parameter in model.named_parameters():
        if id(parameter) in skipped or set(name.split(".")) & set(PREFILL_ONLY_MODULES):
            continue
        total += parameter.numel() * parameter.element_size()
    return total


@dataclass(frozen=True)
class Workload:
    """What one measurement feeds the model."""

    arch: str
    shape: Shape
    prompt_tokens: int
    new_tokens: int
    device: str
    dtype: Any
    tiles: int = 1

    def prompt_ids(self, text_ids: list[int]) -> list[int]:
        """One prompt: BOS, the image's placeholders, the text, end of utterance, 'Assistant:'."""
        fake, image, end_of_utterance = (self.shape.vocab + i for i in range(3))
        per_tile = [fake, *[image] * image_tokens_per_tile(self.arch, self.shape)]
        placeholders = per_tile * self.tiles + [fake]
        return [BOS, *text_ids[:2], *placeholders, *text_ids[2:], end_of_utterance, *text_ids[:3]]

    def inputs(self, batch_size: int, seed: int = 0) -> dict[str, Any]:
        """Model inputs for ``batch_size`` prompts of equal length (random text ids)."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        size = (batch_size, self.prompt_tokens)
        texts = torch.randint(3, self.shape.vocab, size, generator=generator)
        ids = torch.tensor([self.prompt_ids(row) for row in texts.tolist()])
        px = self.shape.input_px
        # Drawn where they are used: a large batch of Idefics3 tiles is gigabytes.
        pixel_generator = torch.Generator(self.device).manual_seed(seed)
        pixels = torch.randn((batch_size, self.tiles, 3, px, px), generator=pixel_generator,
                             device=self.device, dtype=self.dtype)  # fmt: skip
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
        if self.arch == "idefics":
            # Text after the image attends to it (the processor's image_attention_mask).
            seen = (ids == self.shape.vocab + 1).cumsum(dim=1).clamp(max=1)
            inputs["image_attention_mask"] = seen.unsqueeze(-1)
        else:
            mask_size = (batch_size, self.tiles, px, px)
            inputs["pixel_attention_mask"] = torch.ones(mask_size, dtype=torch.bool)
        return {k: v.to(self.device) for k, v in inputs.items()}
