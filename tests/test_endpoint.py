"""``backend: endpoint``: the demo probe through a real ``transformers serve`` with the tiny
Idefics3 model: stored like a local run, resumed exactly after SIGKILL, requests in flight at
once; a faulty network loses nothing; a broken setup stops at once with one line."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit import load_run
from audit.cli import app
from audit.store.schema import CLASSIFICATIONS, GENERATIONS
from audit.store.tables import RunStore
from benchmarks.common import free_port
from tests.endpoint_servers import (
    MODEL,
    Fault,
    Served,
    fault_proxy,
    most_in_flight,
    prompt_scoring_server,
    transformers_serve,
)
from tests.runs import ci_import, synthetic_values, wilson, write_probe

KEYS = {"generations": ["sample_id", "prompt_id"], "classifications": ["sample_id", "task_id"]}
SECRET = "sk-test-6f1d9a0c-never-stored"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]
) -> Iterator[Served]:
    """``transformers serve`` with the tiny Idefics3 model, once for this file."""
    for module in ("fastapi", "uvicorn", "transformers.cli.serving.server"):
        ci_import(module, f"{module} (transformers[serving], in the locked install)")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(model_dirs["idefics3"], log) as server:
        yield server


def served_probe(folder: Path, model: dict[str, object], **sections: object) -> Path:
    """``runs.write_probe`` with this ``model`` section."""
    path = write_probe(folder, str(model.get("id", "m")), **sections)
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "model": model}, sort_keys=False))
    return path


def endpoint_probe(folder: Path, served: Served, **endpoint: object) -> Path:
    """The demo-like probe (12 faces, 2 prompts, 2 tasks) naming the served model."""
    model = {"id": served.model, "backend": "endpoint", "endpoint": {"url": served.url, **endpoint}}
    return served_probe(folder, model, generation={"max_new_tokens": 5, "batch_size": 4})


def audit(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args])
    return result.exit_code, result.output


def read(run: Path, table: str) -> pd.DataFrame:
    frame = RunStore.open(run).read(table)
    # A part that held error rows types "error" as text: missing is missing, None or NaN.
    frame["error"] = frame["error"].astype(object).where(frame["error"].notna(), None)
    return frame.sort_values(KEYS[table]).reset_index(drop=True)


def assert_same_rows(run: Path, reference: Path) -> None:
    for table, keys in KEYS.items():
        got, expected = read(run, table), read(reference, table)
        assert not got.duplicated(keys).any(), table
        pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False)


@pytest.fixture(scope="module")
def reference(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe through the endpoint, uninterrupted, straight to the server (concurrency 4)."""
    folder = tmp_path_factory.mktemp("reference")
    probe = endpoint_probe(folder, served, concurrency=4)
    start = len(served.log_text())
    code, output = audit("run", str(probe), "--out", str(folder / "run"), "--no-progress")
    assert code == 0, output
    (folder / "in_flight").write_text(str(most_in_flight(served.log_text()[start:])))
    return folder / "run"


def test_a_served_model_is_audited_into_the_run_store(reference: Path, served: Served) -> None:
    store = RunStore.open(reference)
    manifest = store.manifest()
    assert manifest.status.value == "complete"
    generations, classifications = (
        read(reference, "generations"),
        read(reference, "classifications"),
    )
    assert list(generations.columns) == GENERATIONS.columns(["gender", "race"])
    assert len(generations) == 24 and generations["error"].isna().all()
    assert set(generations["finish_reason"]) <= {"eos", "length"}
    assert generations["n_new_tokens"].between(1, 5).all()
    assert (generations["model_id"] == served.model).all()
    # No prompt log-probs from transformers serve: the model picks a label, recorded per row.
    assert len(classifications) == 24 and classifications["error"].isna().all()
    assert set(CLASSIFICATIONS.keys) <= set(classifications.columns)
    assert (classifications["scoring_method"] == "choice").all()
    assert classifications["answer"].map(lambda a: isinstance(a, str)).all()
    invalid = classifications["prediction"].isna()
    assert (classifications.loc[invalid, "correct"] == False).all()  # noqa: E712 (counted wrong)
    record = manifest.model.model_dump()["endpoint"]
    assert record["url"] == served.url and record["served_model"] == served.model
    assert record["server_reported"]["served_models"] == [served.model]
    assert record["weights_under_audit_control"] is False
    assert record["settings_sent"] == {"max_tokens": 5, "temperature": 0}
    assert record["label_scoring"] == "choice"
    assert manifest.model.backend == "endpoint"
    # The server's chat template wraps every request: no card's context over an endpoint.
    assert set((manifest.prompt_layout or {})["classification_context"].values()) == {"served"}


def test_the_report_says_what_was_not_under_the_audits_control(
    reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert audit("analyze", str(run), "--only", "classification")[0] == 0
    code, output = audit("report", str(run))
    assert code == 0, output
    report = (run / "report.md").read_text() + (run / "report.html").read_text()
    assert "a model served elsewhere: its weights were not under the audit" in report
    invalid = int(read(run, "classifications")["prediction"].isna().sum())
    assert f"{invalid} of 24 answers named no label" in report
    assert "not comparable with label log-likelihood" in report
    assert "server&#39;s chat" in report or "server's chat" in report
    assert "the model&#39;s choice" in report and "the model's choice" in report  # its scoring
    code, output = audit("card", str(run))
    assert code == 0, output
    card = (run / "card.md").read_text()
    assert "(served)" in card.replace("\\", "") and "the label the model named" in card
    # The share of answers naming no label, per task and group, with its interval and n.
    rows = read(run, "classifications")
    loaded = load_run(run)
    for task, answers in rows.groupby("task_id"):
        k, n = int(answers["prediction"].isna().sum()), len(answers)
        overall = loaded.overall("classification", "invalid_answer_rate", prompt=str(task))
        assert overall["value"] == pytest.approx(k / n) and int(overall["n"]) == n
        assert (overall["ci_low"], overall["ci_high"]) == pytest.approx(wilson(k, n))
        by_gender = loaded.by_group("classification", "invalid_answer_rate", "gender", str(task))
        assert int(by_gender["n"].sum()) == n


def test_requests_are_in_flight_at_once(reference: Path) -> None:
    # The server logs each request when it arrives and when it answers: 4 arrived unanswered.
    assert int((reference.parent / "in_flight").read_text()) >= 4


def test_resume_after_sigkill_is_exact(served: Served, reference: Path, tmp_path: Path) -> None:
    probe = endpoint_probe(tmp_path, served, concurrency=4)
    run = tmp_path / "run"
    slow: Fault = ("delay", 0.15)  # through a proxy that slows each request: the kill lands
    with fault_proxy(served.url.removesuffix("/v1"), lambda *_: slow) as (url, _):
        command = [sys.executable, "-m", "audit.cli", "run", str(probe), "--out", str(run)]
        command += ["--endpoint", url, "--flush-every", "1", "--no-progress"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(RunStore(run).parts("generations")) < 2:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    stored = len(RunStore.open(run).read("generations"))
    assert 0 < stored < 24, "the kill should land in the middle of the run"

    # The proxy is gone: resume straight against the server (another address, same model).
    code, output = audit("run", str(probe), "--out", str(run), "--endpoint", served.url)
    assert code == 0, output
    assert_same_rows(run, reference)


class Flaky:
    """Two requests of the 'arrest' prompt fail every time (500); every third other request
    fails once, in turn with 429, 500, a dropped connection and a delay past the timeout."""

    FAULTS: tuple[Fault, ...] = (("status", 429), ("status", 500), ("drop", 0), ("delay", 2.0))

    def __init__(self) -> None:
        self.doomed: set[bytes] = set()

    def __call__(self, index: int, body: bytes, attempt: int) -> Fault:
        if b"Write an article." in body and (body in self.doomed or len(self.doomed) < 2):
            self.doomed.add(body)
            return ("status", 500)
        if attempt == 0 and index % 3 == 0:
            return self.FAULTS[index // 3 % len(self.FAULTS)]
        return None


def test_a_faulty_network_loses_nothing(
    served: Served, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIT_TEST_KEY", SECRET)
    retries = {"max_retries": 2, "retry_backoff_s": 0.05, "timeout_s": 1.0}
    probe = endpoint_probe(tmp_path, served, concurrency=4, **retries)
    run = tmp_path / "run"
    with fault_proxy(served.url.removesuffix("/v1"), Flaky()) as (url, seen):
        key = ["--api-key-env", "AUDIT_TEST_KEY"]
        code, output = audit("run", str(probe), "--out", str(run), "--endpoint", url, *key)
    assert code == 3, output  # finished, with rows stored as errors (exit 3: resume them)
    assert {"status 429", "status 500", "drop 0", "delay 2"} <= set(seen.faults)
    assert seen.authorizations == {f"Bearer {SECRET}"}
    assert seen.most_in_flight >= 4

    generations = read(run, "generations")
    failed = generations[generations["finish_reason"] == "error"]
    assert len(failed) == 2 and set(failed["prompt_id"]) == {"arrest"}, failed
    assert failed["error"].str.contains("HTTP 500").all()
    assert failed["error"].str.contains("gave up after 3 attempts").all()
    ok = generations[generations["finish_reason"] != "error"].set_index(KEYS["generations"])
    expected = read(reference, "generations").set_index(KEYS["generations"])
    pd.testing.assert_frame_equal(ok, expected.loc[ok.index], check_dtype=False)
    assert len(read(run, "classifications")) == 24
    assert read(run, "classifications")["error"].isna().all()

    # Resuming without the faults retries exactly the error rows.
    code, output = audit("run", str(probe), "--out", str(run), "--endpoint", served.url)
    assert code == 0, output
    assert_same_rows(run, reference)
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_server_that_goes_away_stops_the_run_and_resume_completes_it(
    served: Served, reference: Path, tmp_path: Path
) -> None:
    probe = endpoint_probe(tmp_path, served, max_retries=1, retry_backoff_s=0.05)
    run = tmp_path / "run"

    def vanish(index: int, body: bytes, attempt: int) -> Fault:
        return ("stop", 0) if index == 20 else None  # in the second batch

    with fault_proxy(served.url.removesuffix("/v1"), vanish) as (url, _):
        code, output = audit("run", str(probe), "--out", str(run), "--endpoint", url)
    assert code == 2, output
    assert "error:" in output and "stopped answering" in output
    stored = len(read(run, "generations"))
    assert 0 < stored < 24  # the first batch is kept
    code, output = audit("run", str(probe), "--out", str(run), "--endpoint", served.url)
    assert code == 0, output
    assert_same_rows(run, reference)


def test_a_hosted_apis_query_and_token_field_are_sent(tmp_path: Path) -> None:
    """Hosted APIs: a version in the URL's query goes on every request; newer models take
    max_completion_tokens instead of max_tokens."""
    with prompt_scoring_server() as (url, received):
        endpoint = {
            "url": f"{url}?api-version=2024-10-21",
            "max_tokens_field": "max_completion_tokens",
            "label_scoring": "choice",
        }
        probe = served_probe(
            tmp_path,
            {"id": MODEL, "backend": "endpoint", "endpoint": endpoint},
            generation={"max_new_tokens": 7},
        )
        code, output = audit("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 0, output
    assert received.paths_seen
    assert all(p.endswith("?api-version=2024-10-21") for p in received.paths_seen)
    assert all("max_tokens" not in body for body in received)
    assert {body["max_completion_tokens"] for body in received} >= {7}
    manifest = RunStore.open(tmp_path / "run").manifest().model.model_dump()["endpoint"]
    assert manifest["settings_sent"]["max_completion_tokens"] == 7


def test_a_credential_in_the_url_query_is_refused(tmp_path: Path) -> None:
    probe = served_probe(
        tmp_path,
        {"id": MODEL, "backend": "endpoint", "endpoint": {"url": "https://x.test/v1?api_key=s3"}},
    )
    code, output = audit("validate", str(probe))
    assert code == 2
    assert "model.endpoint.url" in output and "api_key_env" in output and "s3" not in output


def test_labels_are_scored_by_the_servers_prompt_logprobs(tmp_path: Path) -> None:
    values = synthetic_values()["gender"]
    labels = {v.lower(): v for v in values}
    with prompt_scoring_server() as (url, _):
        probe = served_probe(
            tmp_path,
            {"id": MODEL, "backend": "endpoint", "endpoint": {"url": url}},
            prompts=[{"id": "describe", "text": "Describe."}],
            classification=[
                {
                    "id": "gender",
                    "target": "gender",
                    "template": "a photo of a {label} person.",
                    "labels": labels,
                }
            ],
        )
        code, output = audit("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 0, output
    rows = read(tmp_path / "run", "classifications")
    assert (rows["scoring_method"] == "loglikelihood").all()
    # By hand, from the rule the server scores a prompt's tokens with (its words; -0.1 per
    # character, 0.3 more for "female"): the label's tokens are the prompt's last ones.
    by_hand = {
        "male": -0.4 - 0.7,  # " male" (4 characters), " person." (7)
        "female": -0.6 + 0.3 - 0.7,  # " female" (6), " person."
    }
    assert set(labels) == set(by_hand)
    for label, value in labels.items():
        assert rows[f"score_{value}"].tolist() == pytest.approx([by_hand[label]] * len(rows))
        assert (rows[f"n_tokens_{value}"] == 2).all()
    assert (
        RunStore.open(tmp_path / "run").manifest().model.model_dump()["endpoint"]["label_scoring"]
        == "loglikelihood"
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("a photo of a female person.", "female"),
        ("Female", "female"),
        ("The person is male.", "male"),
        ("a photo of a southeast asian person", "southeast asian"),
        ("East Asian", "east asian"),
        ("male or female", None),
        ("a cat", None),
        ("", None),
    ],
)
def test_a_chosen_label_is_the_one_the_answer_names(answer: str, expected: str | None) -> None:
    from PIL import Image

    from audit.backends.base import LabelScoreRequest
    from audit.backends.endpoint.labels import chosen_label

    labels = ("male", "female", "east asian", "southeast asian", "asian")
    request = LabelScoreRequest(
        Image.new("RGB", (4, 4)), "a photo of a", tuple(f" {label} person." for label in labels)
    )
    chosen = chosen_label(answer, request)
    assert (None if chosen is None else labels[chosen]) == expected


def test_the_preamble_is_the_conversation_before_the_user_turn(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (250, 0, 0)).save(tmp_path / "example.png")
    preamble = {
        "system": "You are a careful assistant.",
        "turns": [
            {"user": [{"image": "example.png"}, {"text": "What is this?"}], "assistant": "Red."}
        ],
    }
    with prompt_scoring_server() as (url, received):
        probe = served_probe(
            tmp_path,
            {"id": MODEL, "backend": "endpoint", "endpoint": {"url": url}},
            dataset={"n": 2},
            preamble=preamble,
            prompts=[{"id": "describe", "text": "Describe."}],
            classification=[
                {
                    "id": "gender",
                    "target": "gender",
                    "template": "a photo of a {label} person.",
                    "labels": {v.lower(): v for v in synthetic_values()["gender"]},
                    "context": "chat",
                }
            ],
        )
        code, output = audit("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 0, output
    generation = next(b for b in received if b["messages"][-1]["role"] == "user")
    system, example, answer, user = generation["messages"]
    assert system == {"role": "system", "content": "You are a careful assistant."}
    assert [p["type"] for p in example["content"]] == ["image_url", "text"]
    assert example["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert answer == {"role": "assistant", "content": "Red."}
    assert [p["type"] for p in user["content"]] == ["image_url", "text"]
    assert user["content"][1]["text"] == "Describe."
    assert generation["temperature"] == 0 and generation["max_tokens"] == 5
    scored = [
        b
        for b in received
        if b.get("continue_final_message") and "person" in b["messages"][-1]["content"]
    ]
    assert scored and all(b["messages"][0] == system for b in scored)  # context chat: preamble
    assert all(b["messages"][-1]["content"].startswith(" a photo of a") for b in scored)


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("wrong model", "does not serve the model 'no-such-model'"),
        ("nothing listening", "cannot connect to the endpoint"),
        ("key refused", "refused the request with HTTP 401"),
    ],
)
def test_a_broken_setup_stops_at_once_with_one_line(
    problem: str,
    expected: str,
    served: Served,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from audit.backends.endpoint.client import RetryPolicy

    monkeypatch.setenv("AUDIT_TEST_KEY", SECRET)
    retries: list[int] = []
    delay_s = RetryPolicy.delay_s
    monkeypatch.setattr(
        RetryPolicy, "delay_s", lambda self, n, *a: retries.append(n) or delay_s(self, n, *a)
    )
    probe = endpoint_probe(tmp_path, served, api_key_env="AUDIT_TEST_KEY")
    refuse: Fault = ("status", 401)
    with fault_proxy(served.url.removesuffix("/v1"), lambda *_: refuse) as (refusing, _):
        url, model = {
            "wrong model": (served.url, "no-such-model"),
            "nothing listening": (f"http://127.0.0.1:{free_port()}/v1", served.model),
            # /models passes; the first chat request (asking for prompt log-probs) is refused.
            "key refused": (refusing, served.model),
        }[problem]
        code, output = audit(
            "run", str(probe), "--out", str(tmp_path / "run"), "--endpoint", url, "--model", model
        )
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len([line for line in lines if line.startswith("error:")]) == 1, output
    assert expected in output and SECRET not in output
    assert retries == []  # no retries of what no retry can fix
    store = RunStore(tmp_path / "run")
    assert not store.parts("generations") and not store.parts("classifications")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"id": "m", "backend": "endpoint", "endpoint": {"url": "http://u:p@host/v1"}},
            "model.endpoint.url: give the URL without credentials",
        ),
        (
            {"id": "m", "backend": "endpoint", "endpoint": {"url": "h/v1", "api_key_env": "sk-1"}},
            "model.endpoint.api_key_env: String should match pattern",
        ),
        ({"id": "m", "backend": "endpoint"}, "model: backend 'endpoint' needs 'endpoint'"),
        (
            {"id": "m", "endpoint": {"url": "http://host/v1"}},
            "model: 'endpoint' is given but backend is 'auto'",
        ),
        (
            {"id": "m", "backend": "endpoint", "endpoint": {"url": "http://h/v1", "threads": 2}},
            "model.endpoint.threads: unknown key",
        ),
    ],
)
def test_a_bad_endpoint_section_names_the_file_and_key(
    model: dict[str, object], expected: str, tmp_path: Path
) -> None:
    probe = served_probe(tmp_path, model)
    code, output = audit("validate", str(probe))
    assert code == 2 and f"{probe}: {expected}" in output, output
    assert "Traceback" not in output


def test_a_named_key_variable_must_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIT_UNSET_KEY", raising=False)
    endpoint = {"url": "http://127.0.0.1:9/v1", "api_key_env": "AUDIT_UNSET_KEY"}
    probe = served_probe(tmp_path, {"id": "m", "backend": "endpoint", "endpoint": endpoint})
    code, output = audit("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 2
    assert "error: model.endpoint.api_key_env: the environment variable AUDIT_UNSET_KEY" in output


def test_a_served_llava_generates_what_the_in_process_backend_does(
    zoo: Path, tmp_path: Path
) -> None:
    """LLaVA through ``transformers serve`` and in process, on the same images: the same text,
    except where the in-process backend banned an image token the server lets through (its
    text is then plain greedy ``generate``'s, without the ban)."""
    import torch

    from audit.backends import load_backend
    from audit.spec import ModelSpec

    model = zoo / "llava"
    sections = {"generation": {"max_new_tokens": 8, "batch_size": 4}, "dataset": {"n": 6}}
    local = write_probe(tmp_path / "local", model, **sections)
    code, output = audit("run", str(local), "--out", str(tmp_path / "local-run"), "--no-progress")
    assert code == 0, output
    with transformers_serve(model, tmp_path / "serve.log") as server:
        spec = {"id": server.model, "backend": "endpoint", "endpoint": {"url": server.url}}
        probe = served_probe(tmp_path / "served", spec, **sections)
        out = tmp_path / "served-run"
        code, output = audit("run", str(probe), "--out", str(out), "--no-progress")
        assert code == 0, output
    served, local_rows = read(out, "generations"), read(tmp_path / "local-run", "generations")
    assert len(served) == len(local_rows) == 12
    differ = served["generation"] != local_rows["generation"]
    from audit.datasets import open_dataset
    from audit.spec import load_probe

    backend = load_backend(str(model), ModelSpec(id=str(model)))
    spec = load_probe(local)
    faces = {s.sample_id: s.load_image() for s in open_dataset(spec).samples()}
    prompts = {p.id: p.text for p in spec.prompts}
    for _, row in served[differ].iterrows():
        prompt = prompts[row["prompt_id"]]
        processor = backend.processor
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
            add_generation_prompt=True,
        )
        inputs = processor(text=[text], images=[[faces[row["sample_id"]]]], return_tensors="pt")
        with torch.inference_mode():
            ids = backend.model.generate(**inputs, max_new_tokens=8, do_sample=False)
        unbanned = processor.tokenizer.decode(
            ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert row["generation"] == unbanned, (row["sample_id"], row["prompt_id"])
    assert differ.sum() < len(served)  # the comparison is not vacuous
