"""Pillow checks for local inputs and downloaded results (Pillow is imported inside the functions).

Stablecog accepts JPEG, PNG and WebP inputs of at most 10 MiB and 1,048,576 pixels
(width × height, e.g. 1024×1024 or 2048×512) and always answers a 4× JPEG.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import IO

MAX_INPUT_BYTES = 10 * 1024 * 1024
MAX_INPUT_PIXELS = 1_048_576
ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class ImageCheckError(ValueError):
    """A local image Stablecog would refuse; ``code`` names the reason, the message what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    size_bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def content_type(self) -> str:
        return ACCEPTED_FORMATS[self.format]


def inspect_image(fh: IO[bytes], size_bytes: int) -> ImageInfo:
    """Read the header (and verify the data) of an image file; raise ImageCheckError if unusable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fh) as img:
            fmt, (width, height) = img.format or "", img.size
            frames = getattr(img, "n_frames", 1)
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageCheckError(
            "not_an_image",
            f"not a readable image ({type(exc).__name__}); check that the file is a complete JPEG, PNG or WebP",
        ) from None
    if fmt not in ACCEPTED_FORMATS:
        raise ImageCheckError(
            "unsupported_format",
            f"a {fmt or 'unknown'} image; Stablecog takes JPEG, PNG or WebP — convert it first",
        )
    if frames > 1:
        raise ImageCheckError("animated_image", f"an animated {fmt} ({frames} frames); export a single frame")
    return ImageInfo(format=fmt, width=width, height=height, size_bytes=size_bytes)


def check_limits(info: ImageInfo) -> None:
    """Raise ImageCheckError when the image exceeds Stablecog's byte or pixel limits."""
    if info.pixels > MAX_INPUT_PIXELS:
        raise ImageCheckError(
            "too_many_pixels",
            f"{info.width}x{info.height} is {info.pixels:,} pixels, over Stablecog's 1,048,576 "
            "(e.g. 1024x1024); downscale it or set downscale_oversized=True",
        )
    if info.size_bytes > MAX_INPUT_BYTES:
        raise ImageCheckError(
            "file_too_large",
            f"{info.size_bytes:,} bytes, over Stablecog's 10 MiB; recompress it or set downscale_oversized=True",
        )


def fit_within_limits(fh: IO[bytes]) -> tuple[bytes, ImageInfo]:
    """Downscale (keeping the aspect ratio) and re-encode an image so it meets the limits."""
    from PIL import Image

    with Image.open(fh) as img:
        img.load()
        width, height = img.size
        scale = min(1.0, math.sqrt(MAX_INPUT_PIXELS / (width * height)))
        size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS)  # type: ignore[assignment]
        keep_png = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
        for quality in (95, 90, 80, 70, 60):
            out = io.BytesIO()
            if keep_png:
                img.save(out, format="PNG", optimize=True)
            else:
                img.convert("RGB").save(out, format="JPEG", quality=quality)
            data = out.getvalue()
            if len(data) <= MAX_INPUT_BYTES or keep_png:
                break
    fmt = "PNG" if keep_png else "JPEG"
    info = ImageInfo(format=fmt, width=size[0], height=size[1], size_bytes=len(data))
    check_limits(info)
    return data, info


def image_size(fh: IO[bytes]) -> tuple[int, int]:
    """Width and height of a downloaded result, after verifying that it decodes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fh) as img:
            size = img.size
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageCheckError(
            "invalid_output_image", f"the downloaded result is not a valid image ({type(exc).__name__})"
        ) from None
    return size
