"""`audit run` sends all prompts of a batch in one ``generate`` call, so each image is encoded
once, and stores what one-request-at-a-time generation gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from audit.backends import GenerationRequest, GenerationSettings, load_backend
from audit.backends.hf.model import HFBackend
from audit.datasets import open_dataset
from audit.run.runner import RunOptions, run_probe_file
from audit.spec import ModelSpec, load_probe
from audit.store.tables import RunStore
from tests.runs import write_probe

N_IMAGES = 6


@pytest.mark.fast_path
@pytest.mark.parametrize("family", ["idefics", "idefics2"])
def test_run_encodes_each_image_once(
    model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    probe = write_probe(
        tmp_path,
        model_dirs[family],
        dataset={"n": N_IMAGES},
        generation={"max_new_tokens": 6, "batch_size": 4},
    )
    # Generation only: label scoring encodes images on its own path.
    data = yaml.safe_load(probe.read_text())
    del data["classification"]
    probe.write_text(yaml.safe_dump(data, sort_keys=False))
    calls: list[int] = []
    encoded: list[int] = []
    original = HFBackend.generate

    def counting_generate(self: HFBackend, requests, settings, **kwargs):  # type: ignore[no-untyped-def]
        if self.fast_paths.checking:  # the fast paths' self-check before the first batch
            return original(self, requests, settings, **kwargs)
        calls.append(len(requests))
        handle = self.model.model.vision_model.register_forward_hook(
            lambda _m, _a, kw, _o: encoded.append(kw["pixel_values"].shape[0]),
            with_kwargs=True,
        )
        try:
            return original(self, requests, settings, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(HFBackend, "generate", counting_generate)
    run_dir = tmp_path / "run"
    run_probe_file(probe, RunOptions(out=run_dir, progress=False))
    monkeypatch.undo()

    # Batches of 4 and 2 images, two prompts each: one call per batch, one encode per image.
    assert calls == [8, 4]
    assert sum(encoded) == N_IMAGES
    stored = RunStore.open(run_dir).read("generations").set_index(["sample_id", "prompt_id"])
    assert len(stored) == 2 * N_IMAGES

    spec = load_probe(probe)
    backend = load_backend(str(model_dirs[family]), ModelSpec(id="naive"))
    one = GenerationSettings(max_new_tokens=6)
    for sample in open_dataset(spec).samples():
        image = sample.load_image().convert("RGB")
        for prompt in spec.prompts:
            expected = backend.generate([GenerationRequest(image, prompt.text)], one, batch_size=1)[
                0
            ]
            row = stored.loc[(sample.sample_id, prompt.id)]
            assert (row["generation"], row["n_new_tokens"]) == (
                expected.text,
                expected.n_new_tokens,
            )
