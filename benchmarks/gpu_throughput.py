"""Benchmark 5: decode throughput of the real idefics-9b architecture on one GPU, and the full
FairFace probe projected from it.

The model has idefics-9b's published shape (LLaMA-7B decoder, CLIP ViT-H/14, 6-layer perceiver
resampler, gated cross-attention every 4 decoder layers: 8.93 B parameters) and random weights;
nothing is downloaded. ``_from_config`` under a ``torch.device`` context creates the parameters
directly on the GPU in bfloat16 and transformers' ``_init_weights`` fills them there (normal,
std ``initializer_range``), so the 18 GB never pass through CPU memory. Values do not change the
speed; ``min_new_tokens = max_new_tokens`` suppresses EOS so every row decodes every step.
``--arch idefics2|idefics3``: Idefics2-8b (Mistral-7B + SigLIP so400m) or Idefics3-8B
(Llama-3.1-8B + SigLIP so400m/14-384). Token ids go in directly, laid out like the card's prompt.

Per batch: tokens/s, ms per decode step (a logits processor stamps each step), peak memory and
the fraction of the memory-bandwidth roofline (the weights a decode step reads, once, over the
step time, against the GPU's peak bandwidth). Decoding is the runner's (key/value room reserved
for the new tokens, IDEFICS v1 image keys and values projected once per call); at the largest
fixed batch it is also timed with transformers' defaults, side by side. The auto batch comes
from the runner's own out-of-memory back-off (``audit.backends.batching``). The runner's path
(``run_probe`` on a ``save_pretrained`` checkpoint) is not run: saving and reloading 18 GB would
dominate, and benchmark 1 measures that path.

    .venv/bin/python -m benchmarks.gpu_throughput [--arch idefics] [--batch-sizes 1,16,32,64]
        [--auto-start 512] [--new-tokens 256] [--peak-gbps GBPS] [--out results.json]

``--scale tiny --device cpu``: the same code on a shrunken model, in seconds (the smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import limit_threads
from benchmarks.gpu_models import (
    ARCHS,
    BOS,
    EOS,
    FAIRFACE_IMAGES,
    FAIRFACE_LABEL_SEQUENCES,
    FAIRFACE_PROMPTS,
    GOAL_MIN,
    IDEFICS3_TILES,
    PAD,
    PEAK_GBPS,
    SCALES,
    Workload,
    build_model,
    count_parameters,
    decode_weight_bytes,
    shape_of,
)


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _make_step_clock(device: str) -> Any:
    from transformers import LogitsProcessor

    class StepClock(LogitsProcessor):
        """Records the time at each decoding step, once its logits are ready."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            _synchronize(device)
            self.times.append(time.perf_counter())
            return scores

    return StepClock()


def _peak_memory_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _reset_peak_memory(device: str) -> None:
    import torch

    gc.collect()  # an out-of-memory traceback's tensors go before the next measurement
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def generate_timed(
    model: Any, work: Workload, batch_size: int, new_tokens: int, runner_decoding: bool = True
) -> dict[str, Any]:
    """One ``generate`` of ``new_tokens`` tokens per row (EOS suppressed), timed per step.

    ``runner_decoding``: decode as the runner's backends do (key/value room reserved for the new
    tokens; IDEFICS v1 image keys and values projected once per call), else transformers'
    defaults.
    """
    import contextlib

    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from audit.backends.hf.fast.cross_attention import projections_remembered
    from audit.backends.hf.fast.kv_cache import growing_cache
    from audit.backends.hf.fast.transformers_api import with_cache

    inputs = work.inputs(batch_size)
    decoding: Any = contextlib.nullcontext()
    if runner_decoding:
        inputs.update(with_cache(model, growing_cache(model, reserve=new_tokens)))
        decoding = projections_remembered(model)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS)  # fmt: skip
    clock = _make_step_clock(work.device)
    _synchronize(work.device)
    start = time.perf_counter()
    with torch.inference_mode(), decoding:
        output = model.generate(**inputs, generation_config=config,
                                logits_processor=LogitsProcessorList([clock]))  # fmt: skip
    _synchronize(work.device)
    total_s = time.perf_counter() - start
    steps = len(clock.times)
    decode_s = clock.times[-1] - clock.times[0]
    return {
        "batch_size": batch_size,
        "prompt_length": int(inputs["input_ids"].shape[1]),
        "steps": steps,
        "new_tokens_per_row": int(output.shape[1] - inputs["input_ids"].shape[1]),
        "total_s": total_s,
        "prefill_s": clock.times[0] - start,
        "decode_step_ms": 1000 * decode_s / (steps - 1) if steps > 1 else math.nan,
        "tokens_per_s": batch_size * steps / total_s,
    }


def measure_batch(
    model: Any, work: Workload, batch_size: int, runner_decoding: bool = True
) -> dict[str, Any]:
    """Warm up at this batch size (2 tokens), then time a full generation and its peak memory."""
    from audit.backends.batching import is_out_of_memory

    _reset_peak_memory(work.device)
    try:
        generate_timed(model, work, batch_size, 2, runner_decoding)
        row = generate_timed(model, work, batch_size, work.new_tokens, runner_decoding)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        return {"batch_size": batch_size, "status": "out_of_memory"}
    return {"status": "ok", **row, "peak_memory_gib": _peak_memory_gib(work.device)}


def find_auto_batch(model: Any, work: Workload, start: int) -> dict[str, Any]:
    """The batch ``--batch-size auto`` settles on: the runner's back-off from ``start`` rows.

    ``start`` prompts go through ``map_in_batches``, which halves a batch on out-of-memory and
    keeps the size that fit; each batch is warmed up like the fixed sizes, and the last one at
    the settled size is the measurement.
    """
    from audit.backends.batching import BatchCeiling, map_in_batches

    ceiling = BatchCeiling()
    timings: list[dict[str, Any]] = []

    def run_batch(rows: Sequence[int]) -> list[int]:
        _reset_peak_memory(work.device)
        generate_timed(model, work, len(rows), 2)
        timing = generate_timed(model, work, len(rows), work.new_tokens)
        timings.append({**timing, "peak_memory_gib": _peak_memory_gib(work.device)})
        return [timing["new_tokens_per_row"]] * len(rows)

    map_in_batches(list(range(start)), start, run_batch, ceiling)
    settled = ceiling.limit(start)
    best = [t for t in timings if t["batch_size"] == settled][-1]
    return {"status": "ok", **best, "auto": True, "auto_start": start, "batches_run": len(timings)}


def measure_scoring(
    model: Any, work: Workload, n_sequences: int, batch_size: int
) -> dict[str, Any]:
    """Sequences/s of plain label scoring: one forward pass per (image, prompt + label) row."""
    import torch

    from audit.backends.batching import BatchCeiling, map_in_batches

    ceiling = BatchCeiling()
    label_tokens = 4

    def score(rows: Sequence[int]) -> list[float]:
        inputs = work.inputs(len(rows), seed=rows[0])
        with torch.inference_mode():
            # Only the label's positions: a vocabulary-wide row per prompt token would not fit.
            output = model(**inputs, logits_to_keep=label_tokens + 1)
        logits = output.logits[:, :-1].float()
        if logits.shape[1] != label_tokens:
            raise RuntimeError(f"{work.arch} ignored logits_to_keep: {tuple(logits.shape)}")
        targets = inputs["input_ids"][:, -label_tokens:]
        picked = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return picked.sum(-1).tolist()

    score(list(range(min(batch_size, n_sequences))))  # warm-up
    _synchronize(work.device)
    start = time.perf_counter()
    scores = map_in_batches(list(range(n_sequences)), batch_size, score, ceiling)
    _synchronize(work.device)
    elapsed = time.perf_counter() - start
    return {"sequences": len(scores), "batch_size": ceiling.limit(batch_size),
            "sequence_tokens": len(work.prompt_ids([0] * work.prompt_tokens)),
            "total_s": elapsed, "sequences_per_s": len(scores) / elapsed,
            "finite_scores": all(math.isfinite(s) for s in scores)}  # fmt: skip


def peak_bandwidth(device: str, override_gbps: float | None) -> tuple[float | None, str]:
    """The device's peak memory bandwidth in GB/s and where the figure came from."""
    if override_gbps is not None:
        return override_gbps, "--peak-gbps"
    if not device.startswith("cuda"):
        return None, "unknown for a CPU; pass --peak-gbps"
    name = device_name(device)
    for key, gbps in PEAK_GBPS:
        if key.lower() in name.lower():
            return gbps, f"data sheet of {key} (matched '{name}')"
    return None, f"unknown for '{name}'; pass --peak-gbps"


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's architecture."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def kv_cache_bytes_per_token(model: Any) -> int:
    """Bytes of keys and values one token keeps in the decoder's cache, over all layers."""
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads  # IDEFICS v1: no GQA
    element_size = next(model.parameters()).element_size()
    return text.num_hidden_layers * 2 * kv_heads * (text.hidden_size // heads) * element_size


def add_roofline(row: dict[str, Any], weight_bytes: int, peak_gbps: float | None,
                 kv_bytes: float) -> None:  # fmt: skip
    """Effective bandwidth of a decode step's reads, and its fraction of the peak.

    ``kv_bytes``: the cache bytes per token per row; a decode step reads, on average, the
    prompt and half the new tokens' worth per row, which dominates the weights at large batches.
    """
    if row.get("status") != "ok" or not math.isfinite(row["decode_step_ms"]):
        return
    step_s = row["decode_step_ms"] / 1000
    cache_bytes = row["batch_size"] * (row["prompt_length"] + row["steps"] / 2) * kv_bytes
    row["decode_tokens_per_s"] = row["batch_size"] / step_s
    row["effective_gbps"] = weight_bytes / step_s / 1e9
    row["effective_gbps_with_kv"] = (weight_bytes + cache_bytes) / step_s / 1e9
    row["roofline_fraction"] = row["effective_gbps"] / peak_gbps if peak_gbps else None
    row["roofline_fraction_with_kv"] = (
        row["effective_gbps_with_kv"] / peak_gbps if peak_gbps else None
    )


def project_fairface(
    best: dict[str, Any], scoring: dict[str, Any], real_model_on_gpu: bool
) -> dict[str, Any]:
    """Minutes for the full FairFace probe at the best measured batch.

    An upper bound on both counts: every generation runs all its tokens (EOS ignored), and
    scoring is one sequence per label (the backend shares the prompt's prefix across labels).
    """
    generations = FAIRFACE_IMAGES * FAIRFACE_PROMPTS
    generation_min = math.ceil(generations / best["batch_size"]) * best["total_s"] / 60
    scoring_min = FAIRFACE_LABEL_SEQUENCES / scoring["sequences_per_s"] / 60
    total_min = generation_min + scoring_min
    return {"generations": generations, "new_tokens": best["steps"],
            "label_sequences": FAIRFACE_LABEL_SEQUENCES, "batch_size": best["batch_size"],
            "generation_min": generation_min, "scoring_min": scoring_min, "total_min": total_min,
            "goal_min": GOAL_MIN,
            # The goal is about the real model on a GPU; a tiny or CPU run only exercises the code.
            "goal_met": total_min <= GOAL_MIN if real_model_on_gpu else None}  # fmt: skip


def _measure_all(model: Any, work: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """Every fixed batch size, the auto batch, the scoring pass and the projection."""
    weight_bytes = decode_weight_bytes(model)
    peak_gbps, peak_source = peak_bandwidth(args.device, args.peak_gbps)
    rows = [measure_batch(model, work, size) for size in args.batch_sizes]
    rows.append(find_auto_batch(model, work, args.auto_start))
    # Side by side at the largest fixed batch: transformers' default decoding, then the runner's.
    size = max(args.batch_sizes)
    decoding = {"batch_size": size,
                "transformers": measure_batch(model, work, size, runner_decoding=False),
                "runner": measure_batch(model, work, size)}  # fmt: skip
    kv_bytes = kv_cache_bytes_per_token(model)
    for row in rows:
        add_roofline(row, weight_bytes, peak_gbps, kv_bytes)
    score_work = dataclasses.replace(work, prompt_tokens=args.score_prompt_tokens)
    scoring = measure_scoring(model, score_work, args.score_sequences, args.score_batch)
    best = max((r for r in rows if r["status"] == "ok"), key=lambda r: r["tokens_per_s"])
    real = args.scale == "full" and args.device.startswith("cuda")
    return {"decode_weight_bytes": weight_bytes, "peak_gbps": peak_gbps,
            "peak_gbps_source": peak_source, "batches": rows, "decoding": decoding,
            "scoring": scoring,
            "projection": project_fairface(best, scoring, real)}  # fmt: skip


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, measure it, and describe where and how (the JSON written by ``--out``)."""
    import torch
    import transformers

    from audit.run.runner import AUTO_BATCH

    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    model = build_model(args.arch, args.scale, args.device, dtype)
    _synchronize(args.device)
    build_s = time.perf_counter() - started
    work = Workload(args.arch, shape_of(args.arch, args.scale), args.prompt_tokens,
                    args.new_tokens, args.device, dtype, args.tiles)  # fmt: skip
    cuda = args.device.startswith("cuda")
    return {
        "benchmark": "gpu_throughput",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "device": args.device, "device_name": device_name(args.device), "dtype": args.dtype,
        "arch": args.arch, "scale": args.scale, "build_s": build_s,
        "weights": "random: transformers' _init_weights (normal, std initializer_range), on device",
        "n_parameters": count_parameters(model),
        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "prompt_length": len(work.prompt_ids([0] * args.prompt_tokens)),
        "image_tiles": args.tiles, "new_tokens": args.new_tokens,
        "peak_memory_measure": "torch.cuda.max_memory_allocated, per batch" if cuda
        else "process peak RSS so far (CPU)",
        "runner_auto_start": AUTO_BATCH["cuda" if cuda else "cpu"],
        **_measure_all(model, work, args),
        "runner_path": "not run: saving and reloading the 18 GB checkpoint would dominate the "
        "figures; benchmark 1 measures the runner's path",
    }  # fmt: skip


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction:.1%}"


def _table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'batch':>10} {'tokens/s':>10} {'ms/step':>9} {'prefill s':>10} {'peak GiB':>9} "
             f"{'GB/s':>8} {'roofline':>9} {'+KV cache':>10}"]  # fmt: skip
    for row in rows:
        label = f"{row['batch_size']}{' auto' if row.get('auto') else ''}"
        if row["status"] != "ok":
            lines.append(f"{label:>10} {'out of memory':>20}")
            continue
        lines.append(
            f"{label:>10} {row['tokens_per_s']:>10.1f} {row['decode_step_ms']:>9.2f} "
            f"{row['prefill_s']:>10.3f} {row['peak_memory_gib']:>9.2f} "
            f"{row['effective_gbps']:>8.1f} {_percent(row['roofline_fraction']):>9} "
            f"{_percent(row['roofline_fraction_with_kv']):>10}"
        )
    return lines


def format_report(result: dict[str, Any]) -> str:
    """The figures as plain text: where and what, one row per batch, scoring, projection."""
    r, s, p, auto = result, result["scoring"], result["projection"], result["batches"][-1]
    goal = {True: "met", False: "NOT met", None: "not applicable: not the real model on a GPU"}
    return "\n".join([
        f"GPU throughput: {r['arch']} ({r['scale']}), {r['n_parameters'] / 1e9:.2f} B "
        f"parameters, {r['dtype']}, on {r['device_name']}",
        f"  {r['date']}; torch {r['versions']['torch']}, transformers "
        f"{r['versions']['transformers']}; model built in {r['build_s']:.1f} s",
        f"  prompt {r['prompt_length']} tokens ({r['image_tiles']} image tile(s)), "
        f"{r['new_tokens']} new tokens, EOS ignored; a decode step reads "
        f"{r['decode_weight_bytes'] / 1e9:.2f} GB of weights; peak bandwidth "
        f"{r['peak_gbps'] or 'n/a'} GB/s ({r['peak_gbps_source']})",
        *_table_lines(r["batches"]),
        _decoding_line(r["decoding"]),
        f"  auto: from {auto['auto_start']}, settled on batch {auto['batch_size']} "
        f"(the runner's auto starts at {r['runner_auto_start']})",
        f"  scoring: {s['sequences_per_s']:.1f} sequences/s ({s['sequences']} sequences of "
        f"{s['sequence_tokens']} tokens, batch {s['batch_size']}, one sequence per label)",
        f"  FairFace at batch {p['batch_size']}: {p['generations']:,} generations x "
        f"{p['new_tokens']} tokens {p['generation_min']:.1f} min + {p['label_sequences']:,} "
        f"label sequences {p['scoring_min']:.1f} min = {p['total_min']:.1f} min "
        f"[goal <= {p['goal_min']:.0f} min on one H100: {goal[p['goal_met']]}]",
        f"  runner's path: {r['runner_path']}",
    ])  # fmt: skip


def _decoding_line(decoding: dict[str, Any]) -> str:
    """The runner's decoding against transformers' defaults, measured one after the other."""
    plain, runner = decoding["transformers"], decoding["runner"]
    if plain["status"] != "ok" or runner["status"] != "ok":
        return f"  decoding at batch {decoding['batch_size']}: out of memory"
    return (f"  decoding at batch {decoding['batch_size']}: runner {runner['tokens_per_s']:.0f} "
            f"tokens/s, {runner['peak_memory_gib']:.1f} GiB vs transformers' defaults "
            f"{plain['tokens_per_s']:.0f} tokens/s, {plain['peak_memory_gib']:.1f} GiB: "
            f"{runner['tokens_per_s'] / plain['tokens_per_s']:.2f}x")  # fmt: skip


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,16,32, got {text!r}")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--scale tiny`` and ``--device cpu`` change some defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--arch", choices=ARCHS, default="idefics")
    add("--scale", choices=SCALES, default="full", help="tiny: a shrunken model for CPU")
    add("--device", default="cuda", help="cuda, cuda:N or cpu")
    add("--dtype", choices=("bfloat16", "float16", "float32"), help="bfloat16 (CPU: float32)")
    add("--batch-sizes", type=_sizes, help="fixed batch sizes (1,16,32,64; tiny: 1,2,4)")
    add("--auto-start", type=int, help="first batch the auto back-off tries (512; tiny: 8)")
    add("--new-tokens", type=int, default=256, help="new tokens per row, EOS ignored")
    add("--prompt-tokens", type=int, default=40, help="text tokens of the prompt")
    add("--tiles", type=int, help="image tiles per prompt (1; idefics3: 17, its split of a face)")
    add("--score-sequences", type=int, help="label sequences timed (512; tiny: 16)")
    add("--score-batch", type=int, help="label sequences per forward pass (64; tiny: 4)")
    add("--score-prompt-tokens", type=int, default=12, help="template and label tokens")
    add("--peak-gbps", type=float, help="the device's peak memory bandwidth, GB/s")
    add("--threads", type=int, help="torch CPU threads (cpu: 1, see benchmarks/common.py)")
    add("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    tiny, cpu = args.scale == "tiny", args.device == "cpu"
    defaults = {"batch_sizes": [1, 2, 4] if tiny else [1, 16, 32, 64],
                "auto_start": 8 if tiny else 512, "score_sequences": 16 if tiny else 512,
                "score_batch": 4 if tiny else 64, "dtype": "float32" if cpu else "bfloat16",
                "tiles": IDEFICS3_TILES if args.arch == "idefics3" else 1,
                "threads": 1 if cpu else None}  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.new_tokens < 2 or min(args.auto_start, args.score_batch, args.tiles) < 1:
        parser.error("--new-tokens must be at least 2; --auto-start, --score-batch, --tiles >= 1")
    if args.tiles != 1 and args.arch != "idefics3":
        parser.error(f"--tiles: {args.arch} takes one image tile per face; only idefics3 splits")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its table, write JSON if asked; 2 when there is no such device."""
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is built here; nothing may download
    import torch

    if args.threads:
        limit_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu (and --scale tiny)", file=sys.stderr)
        return 2
    result = run_benchmark(args)
    print(format_report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
