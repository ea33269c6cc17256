"""Open datasets through the ``datasets`` library: hub ids, local parquet, ``save_to_disk`` folders.

``hub`` calls ``datasets.load_dataset(path, config, split=..., revision=...)`` (a local folder in
hub layout works too, offline); ``parquet`` reads a file or a folder of parquet files through
``load_dataset("parquet", data_files=...)``; ``disk`` reads a ``save_to_disk`` folder through
``load_from_disk``. Every failure the user can fix becomes a ``DatasetError`` naming the probe key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from audit.datasets.arrow_source import ArrowSource
from audit.errors import DatasetError
from audit.spec import ProbeSpec

if TYPE_CHECKING:
    import datasets

_RELATIVE_HINT = "(relative paths are resolved from the probe file's folder)"


def open_hub(spec: ProbeSpec) -> ArrowSource:
    """A hub dataset id, or a local folder in hub layout when ``dataset.path`` names one."""
    import datasets

    dataset = spec.dataset
    path = str(dataset.path)
    local = spec.resolve_path(path)
    if not local.exists() and _looks_local(path):
        raise DatasetError(f"dataset.path: folder {local} does not exist {_RELATIVE_HINT}")
    location = str(local) if local.exists() else path
    try:
        table = datasets.load_dataset(
            location, dataset.config, split=dataset.split, revision=dataset.revision
        )
    except ConnectionError as error:
        raise DatasetError(
            f"dataset.path: cannot reach the hub dataset '{path}' ({error}). Download it once "
            "with network access (it is then read from the cache, also with HF_HUB_OFFLINE=1), "
            "or point dataset.path at a local copy"
        ) from None
    except FileNotFoundError as error:
        raise DatasetError(
            f"dataset.path: no local folder {local} and no hub dataset '{path}' ({error}). "
            "Check the id's spelling, or log in with `hf auth login` for a gated dataset"
        ) from None
    except ValueError as error:
        message = " ".join(str(error).split())  # datasets' multi-line hints on one line
        raise DatasetError(f"{_key_of(message)}: {path}: {message}") from None
    provenance = _provenance(spec, "hub", table)
    if local.exists():
        provenance["resolved"] = str(local)
    return ArrowSource(table, dataset, provenance, image_root=local if local.exists() else None)


def open_parquet(spec: ProbeSpec) -> ArrowSource:
    """A parquet file, or every ``*.parquet`` file under a folder (sorted by path)."""
    import datasets

    dataset = spec.dataset
    target = spec.resolve_path(str(dataset.path))
    if target.is_dir():
        files = sorted(str(p) for p in target.rglob("*.parquet"))
        if not files:
            raise DatasetError(f"dataset.path: folder {target} holds no *.parquet files")
    elif target.is_file():
        files = [str(target)]
    else:
        raise DatasetError(
            f"dataset.path: {target} does not exist; give a parquet file or a folder of parquet "
            f"files {_RELATIVE_HINT}"
        )
    try:
        # The probe's split names the one split these files form, whatever it is called.
        table = datasets.load_dataset(
            "parquet", data_files={dataset.split: files}, split=dataset.split
        )
    except datasets.exceptions.DatasetBuildError as error:
        raise DatasetError(
            f"dataset.path: cannot read parquet from {target}: {error.__cause__ or error}"
        ) from None
    provenance = _provenance(spec, "parquet", table)
    provenance["resolved"] = str(target)
    root = target if target.is_dir() else target.parent
    return ArrowSource(table, dataset, provenance, image_root=root)


def open_disk(spec: ProbeSpec) -> ArrowSource:
    """A folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``: the split)."""
    import datasets

    dataset = spec.dataset
    target = spec.resolve_path(str(dataset.path))
    if not target.is_dir():
        raise DatasetError(
            f"dataset.path: folder {target} does not exist; give a folder written by "
            f"save_to_disk {_RELATIVE_HINT}"
        )
    try:
        loaded = datasets.load_from_disk(str(target))
    except FileNotFoundError as error:
        raise DatasetError(
            f"dataset.path: {target} is not a save_to_disk folder ({error}); for parquet files "
            "use source: parquet"
        ) from None
    table = loaded if isinstance(loaded, datasets.Dataset) else _split_of(loaded, spec, target)
    provenance = _provenance(spec, "disk", table)
    provenance["resolved"] = str(target)
    return ArrowSource(table, dataset, provenance, image_root=target)


def _split_of(loaded: datasets.DatasetDict, spec: ProbeSpec, target: Path) -> datasets.Dataset:
    split = spec.dataset.split
    if split not in loaded:
        raise DatasetError(
            f"dataset.split: split '{split}' not found in {target}; it has: {', '.join(loaded)}"
        )
    return loaded[split]


def _provenance(spec: ProbeSpec, source: str, table: datasets.Dataset) -> dict[str, str | int]:
    dataset = spec.dataset
    provenance: dict[str, str | int] = {
        "source": source,
        "path": str(dataset.path),
        "config": dataset.config or "",
        "split": dataset.split,
        "fingerprint": table._fingerprint,
    }
    if dataset.revision:
        provenance["revision"] = dataset.revision
    return provenance


def _key_of(message: str) -> str:
    """Which probe key a ``load_dataset`` ValueError is about (config and split are the usual)."""
    lowered = message.lower()
    if "config" in lowered:
        return "dataset.config"
    if "split" in lowered:
        return "dataset.split"
    return "dataset.path"


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path
