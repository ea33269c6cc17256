"""Reports, cards and the dashboard are shared beyond the machine that made them: no text of
theirs holds a path of it. Models, datasets and scorers are named as a reader knows them: a hub
id as it is, a local folder by its name marked "(local)"."""

from __future__ import annotations

import shutil
from pathlib import Path

from audit.locations import public_name
from tests.runs import run_cli


def test_no_report_or_card_of_local_runs_holds_a_path_of_the_machine(
    tiny_run: Path, tmp_path: Path
) -> None:
    # Two runs of a local model with a local toxicity scorer, compared (the comparison's
    # toxicity rows are named by the scorer), reported and carded.
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_run, a)
    shutil.copytree(tiny_run, b)
    assert run_cli("analyze", str(b), "--against", str(a))[0] == 0
    out = tmp_path / "out"
    assert run_cli("report", str(a), str(b), "--out", str(out))[0] == 0
    assert run_cli("card", str(a), str(b), "--out", str(out))[0] == 0
    written = [p for p in out.iterdir() if p.is_file()]
    assert {p.suffix for p in written} >= {".html", ".md", ".json", ".yaml"}
    machine = str(tiny_run.parents[1])  # the folder every local model, scorer and run is in
    for path in written:
        assert machine not in path.read_text(encoding="utf-8"), path.name
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "idefics2 (local)" in text and "toxicity (transformers:scorer (local))" in text


def test_locations_are_named_as_a_reader_knows_them() -> None:
    assert public_name("HuggingFaceM4/idefics-9b-instruct") == "HuggingFaceM4/idefics-9b-instruct"
    assert public_name("/home/someone/models/qwen2_vl/") == "qwen2_vl (local)"
    assert public_name("./models/llava") == "llava (local)"
    assert public_name("detoxify:original") == "detoxify:original"
    assert public_name("transformers:/tmp/x/scorers/toxicity") == "transformers:toxicity (local)"
    assert public_name("transformers:citizenlab/distilbert") == "transformers:citizenlab/distilbert"
