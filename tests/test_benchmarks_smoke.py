"""The benchmark scripts run end to end at tiny sizes (``--quick``), so they cannot rot.

Their figures are not checked (timings on a shared machine are not test material); what is
checked is what each script must get right whatever the timings: the runner's outputs equal the
naive loop's, and both memory runs complete with one stored row per image.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import memory_scaling, runner_vs_naive


@pytest.mark.usefixtures("restored_environment")
def test_runner_vs_naive_quick_gives_identical_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = runner_vs_naive.main(
        ["--quick", "--families", "idefics,idefics2", "--work-dir", str(tmp_path)]
    )
    output = capsys.readouterr().out
    assert code == 0, output
    # 3 images x 3 prompts per family: every output of the runner (with and without fast
    # paths) and of the card's batched generate equal to the naive loop's.
    for side in ("runner", "runner without fast paths", "card's batched generate"):
        line = f"outputs of the {side} against the naive loop: 9/9 identical\n"
        assert output.count(line) == 2, output
    for baseline in ("naive loop", "card's batched generate", "runner without fast paths"):
        summary = rf"summary \(runner over {baseline}, median\): idefics \d+\.\d\dx, idefics2 "
        assert re.search(summary, output), output
    assert "machine: " in output and "versions: " in output


@pytest.mark.usefixtures("restored_environment")
def test_memory_scaling_quick_measures_two_complete_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = memory_scaling.main(["--quick", "--work-dir", str(tmp_path)])
    output = capsys.readouterr().out
    assert code == 0, output
    peaks = [float(p) for p in re.findall(r"images: peak +([\d.]+) MiB", output)]
    assert len(peaks) == 2 and all(p > 50 for p in peaks), output  # a torch process, measured
    assert "stored: 50 rows" in output and "stored: 200 rows" in output
    ratio = r"peak ratio 200 / 50 images: \d+\.\d\dx \[target <= 1.5x: (met|NOT met)\]"
    assert re.search(ratio, output)
