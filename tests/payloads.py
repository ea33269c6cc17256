"""Injection payloads: text a model or a shared dataset could hold that would turn into markup,
links, scripts or terminal commands if shown raw. Imported by the injection tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from runs import jpeg_bytes

# Sets ``window.__pwned`` wherever it would run, so a browser test can tell.
PWN = "window.__pwned=1"

HTML = [
    f"<script>{PWN}</script>",
    f'<img src=x onerror="{PWN}">',
    f"<svg onload={PWN}>",
    f'<iframe src="javascript:{PWN}"></iframe>',
    f"<body onload={PWN}>",
    f'<a href="javascript:{PWN}">click</a>',
    f'<details open ontoggle="{PWN}">',
    "<style>*{background:url(https://evil.example/css)}</style>",
    '<base href="https://evil.example/">',
    '<form action="https://evil.example/"><button>go</button></form>',
    '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
    f"</textarea><script>{PWN}</script>",
    f"</script><script>{PWN}</script>",
    f'" onmouseover="{PWN}" x="',
    f"' onfocus='{PWN}' autofocus '",
    f"<!--<script>{PWN}</script>-->",
    f"<![CDATA[<script>{PWN}</script>]]>",
    f"&lt;script&gt;{PWN}&lt;/script&gt;",
    f"<math><mtext><script>{PWN}</script></mtext></math>",
    f'<object data="javascript:{PWN}"></object>',
    '<link rel="stylesheet" href="https://evil.example/x.css">',
    f"<video><source onerror={PWN}></video>",
]
MARKDOWN = [
    f"[click](javascript:{PWN})",
    "![pixel](https://evil.example/pixel.png)",
    "[ref]: https://evil.example/ref",
    "[text][ref]",
    "<https://evil.example/angle>",
    "# heading",
    "a | b | c",
    "`code` **bold** _em_ ~~gone~~",
    "```\nfenced\n```",
    "> quoted\n> text",
    "- [x] task",
    "| --- | --- |",
    "$\\frac{1}{2}$ and $$x^2$$",
    "line one\n\nline two",
    "\\` escaped backtick \\",
    "*unclosed _emphasis",
]
AUTOLINKS = [
    "see https://evil.example/x now",
    "www.evil.example/path",
    "WWW.EVIL.EXAMPLE",
    "mail bob@evil.example please",
    "mailto:bob@evil.example",
    "xmpp:bob@evil.example",
    "ftp://evil.example/file",
    f"https://evil.example/x<img src=x onerror={PWN}>",
    "http://evil.example/a_(b)_c",
    "@octocat and #123 and GH-42",
]
TERMINAL = [
    "\x1b]0;pwned title\x07",
    "\x1b[2J\x1b[Hcleared",
    "bell\x07 and nul\x00 byte",
    "back\x08\x08\x08space",
    "carriage\rreturn over",
    "\u202egnirts desrever",
    "\u2066isolate\u2069 and \u200fmark",
    "\x9b31mC1 CSI",
]
TEMPLATES = [
    "{{ 7*7 }} {% if true %}jinja{% endif %}",
    "${7*7} #{7*7}",
    ":red[streamlit colour] :material/home: :smile:",
    '=HYPERLINK("https://evil.example","x")',
]
PAYLOADS: list[str] = [*HTML, *MARKDOWN, *AUTOLINKS, *TERMINAL, *TEMPLATES]
assert len(PAYLOADS) >= 50 and len(set(PAYLOADS)) == len(PAYLOADS)

#: Characters that must never reach a terminal raw (C0/C1 controls but newline and tab,
#: direction overrides and isolates).
UNSAFE_FOR_TERMINAL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, 0x9B)] + [
    "\u202e",
    "\u2066",
    "\u2069",
    "\u200f",
]


def write_payload_source(path: Path, n_images: int = 24) -> Path:
    """A generations file to ``audit import``: every payload as a generation, and payloads in the
    sample ids, the prompt ids and prompts, the group values and the model id."""
    groups = ["Female", "Male", HTML[1], AUTOLINKS[7]]
    ids = [f"img-{i}" for i in range(n_images)]
    ids[:4] = [TERMINAL[0] + "id", HTML[0] + "id", AUTOLINKS[3] + "id", MARKDOWN[0] + "id"]
    # Prompt ids follow the probe format's id pattern; prompts are free text.
    prompts = {"resume": "Write a resume.", "dating": MARKDOWN[1], "arrest": HTML[5] + TERMINAL[5]}
    rows = []
    k = 0
    for prompt_id, prompt in prompts.items():
        for i, sample_id in enumerate(ids):
            payload = PAYLOADS[k % len(PAYLOADS)]
            k += 1
            rows.append(
                {
                    "sample_id": sample_id,
                    "image": jpeg_bytes(i),
                    "prompt_id": prompt_id,
                    "prompt": prompt,
                    "generation": f"{payload} nurse engineer {payload}",
                    # Three images in a group too small to estimate: rows without a term.
                    "gender": groups[i % len(groups)] if i < n_images - 3 else "Other",
                    "race": TEMPLATES[i % len(TEMPLATES)],
                    "model_id": TERMINAL[0] + HTML[0],
                }
            )
    # Every payload once more, on its own, so none is only seen cut short.
    for j, payload in enumerate(PAYLOADS):
        plain = f"plain-{j // n_images}"
        rows.append(
            {**rows[j % n_images], "prompt_id": plain, "prompt": "x", "generation": payload}
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


_RUNS: dict[str, tuple[Path, dict[str, str]]] = {}


def payload_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:  # type: ignore[no-untyped-def]
    """A run imported from ``write_payload_source`` with ``audit import``, analysed with
    ``audit analyze`` (toxicity scored by the demo's tiny classifier) and reported with
    ``audit report``; and what each command printed. Built once per test session."""
    if "run" not in _RUNS:
        from test_report_fixture import tiny_scorer
        from typer.testing import CliRunner

        from audit.cli import app

        root = tmp_path_factory.mktemp("payloads")
        source = write_payload_source(root / "source.parquet")
        scorer = tiny_scorer(root / "scorer")
        commands = {
            "import": [
                "import",
                str(source),
                "--group",
                "gender",
                "--group",
                "race",
                "--out",
                str(root / "runs"),
                "--model-id",
                "payloads",
            ],
            "analyze": ["analyze", "RUN", "--set", f"toxicity.scorer={scorer}"],
            "status": ["status", "RUN"],
            "report": ["report", "RUN"],
        }
        outputs, run = {}, root  # the run's folder is known once imported
        for name, args in commands.items():
            result = CliRunner().invoke(app, [str(run) if a == "RUN" else a for a in args])
            assert result.exit_code == 0, (name, result.output, repr(result.exception))
            if name == "import":  # the run is named after the source and the model id
                run = Path(result.output.split("imported: ")[1].strip())
            outputs[name] = result.output
        _RUNS["run"] = (run, outputs)
    return _RUNS["run"]
