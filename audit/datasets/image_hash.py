"""An image's identity across sources: a digest of its decoded pixels.

The same face reaches the workbench through different containers: FairFace's JPEG files, a
``datasets`` parquet that stores them again (possibly as PNG), a ``save_to_disk`` folder. The
file bytes differ with the container, the encoder settings and the metadata (EXIF, ICC, PNG
chunks), while a lossless re-encoding keeps every pixel; so the digest covers the pixels, not
the file. A lossy re-encoding (JPEG saved again) changes pixels and gives another digest.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image

#: What the digest covers, written before the pixels so that two sizes of one byte string
#: (a 2x8 and a 4x4 image) never collide.
_HEADER = "RGB {width}x{height}\n"


def image_sha256(image: Image.Image) -> str:
    """sha256 over mode ``RGB``, size and the RGB pixel bytes of ``image`` (hex)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(_HEADER.format(width=rgb.width, height=rgb.height).encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def encoded_image_sha256(data: bytes) -> tuple[Image.Image, str]:
    """Decode an encoded image (``OSError`` when it cannot be) and digest its pixels."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    return image, image_sha256(image)
