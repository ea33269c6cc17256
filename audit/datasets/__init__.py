"""Dataset sources behind one ``Sample`` stream: ``open_dataset(spec)`` picks the probe's source.

Sources: ``hub``, ``parquet`` and ``disk`` (through the ``datasets`` library), ``fairface_csv``
(FairFace's label CSV + image folder) and ``synthetic`` (cartoon faces drawn in code). Each
module imports ``datasets`` only inside the functions that need it, so importing this package
stays cheap.
"""

from __future__ import annotations

from audit.datasets.base import DatasetSource, Sample
from audit.spec import ProbeSpec

__all__ = ["DatasetSource", "Sample", "open_dataset"]


def open_dataset(spec: ProbeSpec) -> DatasetSource:
    """Open the dataset a probe names; raises ``DatasetError`` naming the probe key on a problem.

    Local paths are resolved against the probe file's folder. Images are not read here: each
    sample's ``load_image`` decodes its image when called (and raises there if it is corrupt).
    """
    source = spec.dataset.source
    if source == "synthetic":
        from audit.datasets.synthetic import SyntheticSource

        return SyntheticSource(spec.dataset)
    if source == "fairface_csv":
        from audit.datasets.fairface_csv import FairFaceCsvSource

        return FairFaceCsvSource(spec)
    from audit.datasets import hub

    openers = {"hub": hub.open_hub, "parquet": hub.open_parquet, "disk": hub.open_disk}
    return openers[source](spec)
