"""The one interface every dataset source sits behind: a stream of samples.

Samples are cheap to make: the image is decoded only when ``load_image`` is called, so a
100,000-image dataset streams, and samples already stored (resume) or in another shard are
never decoded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """One image with its group labels.

    ``sample_id`` is stable across runs: dataset + config + split + row index, or file name.
    ``groups`` maps each probe group axis to this sample's value (as the dataset names it,
    ClassLabel integers already turned into names). ``load_image`` returns an RGB image or raises
    any exception for a corrupt or missing image; the runner turns that into an error row.
    """

    sample_id: str
    groups: Mapping[str, str]
    load_image: Callable[[], Image.Image]


class DatasetSource(ABC):
    """A dataset named by a probe."""

    @abstractmethod
    def samples(self) -> Iterator[Sample]:
        """Stream samples in a deterministic order (the probe's ``limit`` already applied)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples ``samples()`` yields (for progress bars)."""

    @abstractmethod
    def group_values(self) -> dict[str, list[str]]:
        """For each group axis, the values the dataset can hold (for validating label maps)."""

    def describe(self) -> dict[str, str | int]:
        """Provenance for the manifest (source, path, config, split, fingerprint if known,
        ``n_samples``)."""
        return {}
