"""The GPU throughput benchmark runs end to end on CPU at tiny scale, so it cannot rot, and its
full-scale models have the published architectures' parameter counts.

Timings are not checked against targets (not test material on a shared machine); what is checked
is what the script must get right whatever the timings: every step decoded, every figure present
and consistent with the others, and the full-scale model really being idefics-9b's shape.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import gpu_throughput

REPO = Path(__file__).resolve().parents[1]
ROW_FIELDS = {
    "batch_size", "status", "prompt_length", "steps", "new_tokens_per_row", "total_s",
    "prefill_s", "decode_step_ms", "tokens_per_s", "decode_tokens_per_s", "peak_memory_gib",
    "effective_gbps", "roofline_fraction", "effective_gbps_with_kv", "roofline_fraction_with_kv",
}  # fmt: skip
# Keys and values per cached token of the tiny models in float32: 2 layers x (k, v) x the
# key/value width (IDEFICS v1: all 4 heads of 16; Idefics2/3: 2 grouped heads of 16) x 4 bytes.
TINY_KV_BYTES = {"idefics": 2 * 2 * 64 * 4, "idefics2": 2 * 2 * 32 * 4, "idefics3": 2 * 2 * 32 * 4}
TOP_FIELDS = {
    "benchmark", "date", "versions", "device", "device_name", "dtype", "arch", "scale",
    "build_s", "weights", "n_parameters", "weight_bytes", "decode_weight_bytes", "prompt_length",
    "image_tiles", "new_tokens", "peak_gbps", "peak_gbps_source", "peak_memory_measure",
    "runner_auto_start", "batches", "scoring", "projection", "runner_path",
}  # fmt: skip


def _check_result(result: dict[str, Any], new_tokens: int, peak_gbps: float) -> None:
    assert result.keys() >= TOP_FIELDS, TOP_FIELDS - result.keys()
    assert result["device"] == "cpu" and result["scale"] == "tiny"
    assert result["weight_bytes"] == 4 * result["n_parameters"]  # float32 on CPU
    assert 0 < result["decode_weight_bytes"] < result["weight_bytes"]
    rows = result["batches"]
    assert [r["batch_size"] for r in rows] == [1, 2, 4, 8]  # tiny sizes, then auto from 8
    assert rows[-1]["auto"] and rows[-1]["auto_start"] == 8
    for row in rows:
        assert row.keys() >= ROW_FIELDS and row["status"] == "ok", row
        assert row["steps"] == row["new_tokens_per_row"] == new_tokens
        assert row["tokens_per_s"] > 0 and row["decode_step_ms"] > 0
        assert row["peak_memory_gib"] > 0
        assert 0 < row["prefill_s"] < row["total_s"]
        assert math.isclose(row["tokens_per_s"], row["batch_size"] * new_tokens / row["total_s"])
        step_s = row["decode_step_ms"] / 1000
        assert (new_tokens - 1) * step_s < row["total_s"]
        assert math.isclose(row["effective_gbps"], result["decode_weight_bytes"] / step_s / 1e9)
        assert math.isclose(row["roofline_fraction"], row["effective_gbps"] / peak_gbps)
        assert row["prompt_length"] == result["prompt_length"]
        cache = row["batch_size"] * (row["prompt_length"] + new_tokens / 2)
        cache *= TINY_KV_BYTES[result["arch"]]
        with_kv = (result["decode_weight_bytes"] + cache) / step_s / 1e9
        assert math.isclose(row["effective_gbps_with_kv"], with_kv)
        assert math.isclose(row["roofline_fraction_with_kv"], with_kv / peak_gbps)
    scoring = result["scoring"]
    assert scoring["sequences"] == 16 and scoring["sequences_per_s"] > 0
    assert scoring["finite_scores"] is True
    projection = result["projection"]
    best = max(rows, key=lambda r: r["tokens_per_s"])
    assert projection["generations"] == 10_954 * 3 and projection["label_sequences"] == 197_172
    assert projection["batch_size"] == best["batch_size"]
    generation_min = math.ceil(32_862 / best["batch_size"]) * best["total_s"] / 60
    assert math.isclose(projection["generation_min"], generation_min)
    scoring_min = 197_172 / scoring["sequences_per_s"] / 60
    assert math.isclose(projection["total_min"], generation_min + scoring_min)
    assert projection["goal_met"] is None  # a tiny CPU model says nothing about the goal


def test_tiny_cpu_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    options = ["--scale", "tiny", "--device", "cpu", "--new-tokens", "12", "--peak-gbps", "50"]
    command = [sys.executable, "-m", "benchmarks.gpu_throughput", *options, "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["arch"] == "idefics" and result["image_tiles"] == 1
    _check_result(result, new_tokens=12, peak_gbps=50.0)
    assert "8 auto" in done.stdout and "FairFace at batch" in done.stdout


@pytest.mark.usefixtures("restored_environment")
@pytest.mark.parametrize(("arch", "tiles"), [("idefics2", 1), ("idefics3", 17)])
def test_tiny_cpu_run_of_the_other_architectures(
    arch: str, tiles: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    argv = ["--arch", arch, "--scale", "tiny", "--device", "cpu", "--new-tokens", "4",
            "--peak-gbps", "20", "--out", str(out)]  # fmt: skip
    assert gpu_throughput.main(argv) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["arch"] == arch and result["image_tiles"] == tiles
    _check_result(result, new_tokens=4, peak_gbps=20.0)
    assert "peak bandwidth 20.0 GB/s (--peak-gbps)" in capsys.readouterr().out


def test_no_gpu_is_a_clean_exit(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_throughput.main(["--scale", "tiny"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


def _decoder_parameters(vocab: int, hidden: int, layers: int, mlp: int, kv_dim: int) -> int:
    """A LLaMA-style decoder: untied embeddings and head, GQA attention, SwiGLU MLP, RMS norms."""
    attention = 2 * hidden * hidden + 2 * hidden * kv_dim
    return 2 * vocab * hidden + layers * (attention + 3 * hidden * mlp + 2 * hidden) + hidden


def _vit_parameters(width: int, layers: int, mlp: int, patch: int, image: int) -> int:
    """A CLIP ViT without its projection: patch conv, class and position embeddings, 2 norms."""
    block = 4 * width * width + 4 * width + 2 * width * mlp + mlp + width + 4 * width
    positions = (image // patch) ** 2 + 1
    return layers * block + 3 * patch * patch * width + width + positions * width + 4 * width


def _parameters_under(model: Any, *prefixes: str) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


def test_full_idefics_has_the_published_9b_shape() -> None:
    model = gpu_throughput.build_model("idefics", "full", "meta", torch.bfloat16)
    n = gpu_throughput.count_parameters(model)
    assert 8.8e9 < n < 9.1e9  # "9B"
    assert 17.5e9 < 2 * n < 18.2e9  # about 18 GB in bfloat16
    # Its decoder is exactly LLaMA-7B (6,738,415,616 parameters) plus 3 added token rows...
    decoder = _parameters_under(model, "model.layers.", "model.norm.", "model.embed_tokens.weight",
                                "lm_head.weight")  # fmt: skip
    assert decoder == _decoder_parameters(32_000, 4096, 32, 11008, 4096) == 6_738_415_616
    assert _parameters_under(model, "model.embed_tokens.additional", "lm_head.additional") == (
        2 * 3 * 4096
    )
    # ...its vision tower exactly CLIP ViT-H/14 at 224 px, with cross-attention every 4 layers
    # and a 6-layer perceiver of 64 latents.
    assert _parameters_under(model, "model.vision_model.") == _vit_parameters(
        1280, 32, 5120, 14, 224
    )
    assert len(model.model.gated_cross_attn_layers) == 32 // 4
    assert len(model.model.perceiver_resampler.blocks) == 6
    assert tuple(model.model.perceiver_resampler.latents.shape) == (64, 1280)
    # Each cached token: 32 layers x (k, v) x 4096 x 2 bytes, half a MiB.
    assert gpu_throughput.kv_cache_bytes_per_token(model) == 32 * 2 * 4096 * 2
    # Created on the device asked for, buffers (rotary frequencies) included: on a GPU nothing
    # would pass through CPU memory.
    tensors = [*model.parameters(), *model.buffers()]
    assert {t.device.type for t in tensors} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("arch", "vocab", "kv_dim", "total"),
    # Mistral-7B and Llama-3.1-8B decoders with 3 added tokens; the totals are the model cards'.
    [("idefics2", 32_003, 1024, 8.40e9), ("idefics3", 128_259, 1024, 8.46e9)],
)
def test_full_idefics2_and_idefics3_have_their_published_shapes(
    arch: str, vocab: int, kv_dim: int, total: float
) -> None:
    model = gpu_throughput.build_model(arch, "full", "meta", torch.bfloat16)
    decoder = _parameters_under(model, "model.text_model.", "lm_head.")
    assert decoder == _decoder_parameters(vocab, 4096, 32, 14336, kv_dim)
    assert abs(gpu_throughput.count_parameters(model) - total) < 0.01e9
    assert gpu_throughput.kv_cache_bytes_per_token(model) == 32 * 2 * kv_dim * 2


@pytest.mark.parametrize(
    "argv",
    [["--tiles", "4"], ["--batch-sizes", "1,x"], ["--new-tokens", "1"], ["--arch", "llava"]],
)
def test_bad_options_exit_with_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_throughput.parse_args(["--scale", "tiny", "--device", "cpu", *argv])
    assert exit_info.value.code == 2
