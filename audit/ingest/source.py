"""Where ``audit import`` reads from: a parquet/CSV file, a dataset folder, or a hub id.

Everything becomes one pandas table with its origin. ``datasets`` images stay encoded
(``{bytes, path}``) until a thumbnail needs them, and class labels become their names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import DatasetError


@dataclass(frozen=True)
class SourceTable:
    """The imported table with where it came from (``origin``: the source as the user gave it)."""

    frame: pd.DataFrame
    origin: str
    kind: str
    split: str
    config: str | None
    image_folder: Path | None = None
    """Folder that relative image paths are resolved from."""
    fingerprint: str | None = None

    @property
    def stem(self) -> str:
        """A name for the run directory: the file or folder name, or the hub id's last part."""
        name = self.origin.rstrip("/").rsplit("/", 1)[-1]
        return Path(name).stem if self.kind in {"parquet", "csv"} else name

    @property
    def probe_source(self) -> str:
        """The closest ``dataset.source`` of a probe (CSV files are described as ``hub``)."""
        return {"parquet": "parquet", "disk": "disk"}.get(self.kind, "hub")

    @property
    def provenance(self) -> dict[str, Any]:
        info = {
            "source": self.kind,
            "path": self.origin,
            "config": self.config or "",
            "split": self.split,
            "n_rows": len(self.frame),
            "columns": list(self.frame.columns),
        }
        return info | ({"fingerprint": self.fingerprint} if self.fingerprint else {})

    def require(self, column: str, key: str) -> None:
        """``DatasetError`` naming the source, the option and the columns it has."""
        if column not in self.frame.columns:
            raise DatasetError(
                f"{self.origin}: {key}: no column '{column}'; the source has columns "
                f"{', '.join(map(str, self.frame.columns))}"
            )

    def row_ids(self) -> list[str]:
        """Stable sample ids from the row index, in the datasets sources' format."""
        return [
            f"{self.origin}:{self.config or ''}:{self.split}:{i}" for i in range(len(self.frame))
        ]

    def image_bytes(self, row: int, column: str) -> bytes | None:
        """The encoded image of a row (datasets' ``{bytes, path}``, raw bytes, or a path
        inside the source's folder); ``None`` when there is none.

        Raises ``ImageOutsideSource`` for a path that leads out of the source's folder (an
        absolute path, ``..``, a link out, a URL): a shared dataset must not make the import
        read other files of this machine."""
        cell = self.frame[column].iat[row]
        if isinstance(cell, dict):
            cell = cell.get("bytes") or cell.get("path")
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell)
        if isinstance(cell, str) and cell:
            path = inside_folder(self.image_folder, cell)
            return path.read_bytes() if path.is_file() else None
        return None


class ImageOutsideSource(ValueError):
    """An image path that leads out of the imported source's folder."""


def inside_folder(folder: Path | None, cell: str) -> Path:
    """The file ``cell`` names inside ``folder`` (``ImageOutsideSource`` if it leads out)."""
    if folder is None or "://" in cell or cell.startswith(("//", "\\\\")):
        raise ImageOutsideSource(cell)
    candidate = Path(cell)
    if candidate.is_absolute():
        raise ImageOutsideSource(cell)
    resolved = (folder / candidate).resolve()  # follows links, so a link out is caught too
    if not resolved.is_relative_to(folder.resolve()):
        raise ImageOutsideSource(cell)
    return resolved


def read_source(source: str, split: str, config: str | None) -> SourceTable:
    """A parquet/CSV file, a dataset folder, or a hub id, as one pandas table."""
    path = Path(source).expanduser()
    if path.is_file():
        return SourceTable(
            _read_file(path),
            source,
            path.suffix.lstrip(".").lower(),
            split,
            config,
            image_folder=path.parent,
        )
    if path.is_dir() or not _looks_like_hub_id(source):
        if not path.is_dir():
            raise DatasetError(
                f"{source}: no such file or folder (expected a .parquet or .csv "
                "file, a dataset folder, or a hub dataset id)"
            )
        return _from_dataset(
            _load_folder(path, source, split, config),
            source,
            "disk" if _is_saved_dataset(path) else "hub",
            split,
            config,
            path,
        )
    return _from_dataset(_load_hub(source, split, config), source, "hub", split, config, None)


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in {".parquet", ".csv"}:
        raise DatasetError(f"{path}: expected a .parquet or .csv file (or a dataset folder)")
    try:
        return pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read it as {suffix[1:]}: {error}") from None


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _load_folder(path: Path, origin: str, split: str, config: str | None) -> Any:
    import datasets

    try:
        if not _is_saved_dataset(path):
            return datasets.load_dataset(str(path), config, split=split)
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as error:
        raise DatasetError(f"{origin}: cannot read the dataset folder: {error}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"{origin}: --split: no split '{split}'; it has {', '.join(loaded)}")
        return loaded[split]
    return loaded


def _load_hub(source: str, split: str, config: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(source, config, split=split)
    except (ConnectionError, OSError, ValueError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise DatasetError(
            f"{source}: cannot load the hub dataset ({reason}). "
            f"Download it once where there is internet ('hf download {source} --repo-type "
            "dataset', then it loads from the cache with HF_HUB_OFFLINE=1), or give a local copy"
        ) from None


def _from_dataset(
    dataset: Any, origin: str, kind: str, split: str, config: str | None, root: Path | None
) -> SourceTable:
    """A ``datasets.Dataset`` as pandas: images left encoded, class labels as their names."""
    import datasets

    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    frame = dataset.to_pandas()
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):
            frame[column] = frame[column].map(
                lambda i, f=feature: f.int2str(int(i)) if i >= 0 else None
            )
    return SourceTable(
        frame, origin, kind, split, config, root, getattr(dataset, "_fingerprint", None)
    )


def _looks_like_hub_id(source: str) -> bool:
    return re.fullmatch(
        r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", source
    ) is not None and not source.endswith((".parquet", ".csv"))
