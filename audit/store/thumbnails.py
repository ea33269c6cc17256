"""The thumbnails table: small JPEGs of each sample, for the dashboard and the report."""

from __future__ import annotations

import io

from PIL import Image

#: Longest side of a stored thumbnail, in pixels.
THUMBNAIL_PX = 96


def thumbnail_jpeg(image: Image.Image) -> bytes:
    small = image.copy()
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
