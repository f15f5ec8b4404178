"""Pillow helpers: deterministic sample images, validation and the 4x upscale."""

from __future__ import annotations

import functools
import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

UPSCALE_FACTOR = 4
OUTPUT_JPEG_QUALITY = 85
ACCEPTED_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_SAMPLE_SIDE = 4096
MAX_SAMPLE_PIXELS = 4096 * 4096
DEFAULT_SAMPLE_SIZES: tuple[str, ...] = ("256x256.png", "320x240.jpg", "512x384.webp", "1024x1024.png")
TOO_BIG_SIZE = (1280, 1024)


class ImageRejected(ValueError):
    """The bytes are not an acceptable input image."""


@dataclass(frozen=True)
class ImageInfo:
    """What validation learnt about an image."""

    format: str  # "jpeg", "png" or "webp"
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def render_sample(width: int, height: int, seed: int = 0) -> Image.Image:
    """Draw a deterministic RGB test image: colour gradients plus shapes and fine detail."""
    rng = random.Random(f"stablecog-emulator:{seed}:{width}x{height}")
    image = _gradient(width, height, rng)
    draw = ImageDraw.Draw(image)
    _draw_shapes(draw, width, height, rng)
    _draw_checker(draw, width, height)
    draw.rectangle((0, 0, width - 1, height - 1), outline=(255, 255, 255))
    draw.text((4, 4), f"{width}x{height} #{seed}", fill=(255, 255, 255))
    return image


def _gradient(width: int, height: int, rng: random.Random) -> Image.Image:
    vertical = Image.linear_gradient("L").resize((width, height))
    horizontal = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    channels = [horizontal, vertical, radial]
    rng.shuffle(channels)
    return Image.merge("RGB", channels)


def _draw_shapes(draw: ImageDraw.ImageDraw, width: int, height: int, rng: random.Random) -> None:
    for _ in range(6):
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))


def _draw_checker(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    size = max(4, min(96, min(width, height) // 4))
    left, top = width - size, height - size
    for y in range(top, height, 2):
        for x in range(left + (y % 4) // 2 * 2, width, 4):
            draw.rectangle((x, y, x + 1, y + 1), fill=(0, 0, 0))


def encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """Encode ``image`` as ``png``, ``jpg``/``jpeg`` or ``webp``."""
    buffer = io.BytesIO()
    fmt = fmt.lower()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=3)
    elif fmt in ("jpg", "jpeg"):
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality)
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    return buffer.getvalue()


def check_sample_size(width: int, height: int) -> None:
    """Refuse sample sizes that are empty or absurdly large."""
    if width < 1 or height < 1 or max(width, height) > MAX_SAMPLE_SIDE or width * height > MAX_SAMPLE_PIXELS:
        raise ValueError(f"sample size must be 1..{MAX_SAMPLE_SIDE} per side")


@functools.lru_cache(maxsize=64)
def sample_bytes(width: int, height: int, fmt: str, seed: int = 0) -> bytes:
    """The encoded sample image (cached: the same request gives the same bytes)."""
    check_sample_size(width, height)
    return encode(render_sample(width, height, seed), fmt)


def parse_sample_name(name: str) -> tuple[int, int, str]:
    """``"256x192.png"`` -> ``(256, 192, "png")``; raises ``ValueError`` otherwise."""
    stem, _, fmt = name.rpartition(".")
    w_text, sep, h_text = stem.partition("x")
    fmt = fmt.lower()
    if not sep or fmt not in MEDIA_TYPES or not (w_text.isdigit() and h_text.isdigit()):
        raise ValueError(f"sample name must look like 256x192.png, not {name!r}")
    width, height = int(w_text), int(h_text)
    check_sample_size(width, height)
    return width, height, fmt


def write_sample_images(
    folder: str | Path,
    sizes: tuple[str, ...] | list[str] = DEFAULT_SAMPLE_SIZES,
    seed: int = 0,
) -> list[Path]:
    """Write real sample images (names like ``"256x192.png"``) into ``folder``."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in sizes:
        width, height, fmt = parse_sample_name(name)
        path = target / name
        path.write_bytes(sample_bytes(width, height, fmt, seed))
        paths.append(path)
    return paths


def inspect_image(data: bytes, max_pixels: int | None = None, decode: bool = True) -> ImageInfo:
    """Check ``data`` is a whole JPEG/PNG/WebP image (within ``max_pixels``)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = ACCEPTED_FORMATS.get(image.format or "")
            if fmt is None:
                raise ImageRejected(f"unsupported image format {image.format!r}")
            info = ImageInfo(fmt, image.width, image.height)
            if max_pixels is not None and info.pixels > max_pixels:
                raise ImageRejected(f"{info.width}x{info.height} is more than {max_pixels} pixels")
            if decode:
                image.load()
            return info
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"not a readable image: {exc}") from exc


def upscale_to_file(source: bytes | Path, destination: Path, factor: int = UPSCALE_FACTOR) -> tuple[int, int]:
    """Upscale ``source`` ``factor`` times, save RGB JPEG q85 at ``destination``; return size."""
    raw = source.read_bytes() if isinstance(source, Path) else source
    with Image.open(io.BytesIO(raw)) as image:
        rgb = image.convert("RGB")
    size = (rgb.width * factor, rgb.height * factor)
    upscaled = rgb.resize(size, Image.Resampling.BICUBIC)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_suffix(".partial")
    upscaled.save(temporary, "JPEG", quality=OUTPUT_JPEG_QUALITY)
    temporary.replace(destination)
    return size


def write_generated_output(destination: Path, width: int, height: int, seed: int) -> None:
    """Write a seeded "generation output" JPEG."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(encode(render_sample(width, height, seed), "jpeg", quality=OUTPUT_JPEG_QUALITY))


# --- deliberately bad inputs -------------------------------------------------------------

NOT_AN_IMAGE = b"This is plain text pretending to be a PNG image.\n"


@functools.lru_cache(maxsize=1)
def truncated_jpeg() -> bytes:
    """A JPEG cut in half: headers parse, decoding fails."""
    whole = sample_bytes(256, 256, "jpg", 7)
    return whole[: len(whole) // 2]


@functools.lru_cache(maxsize=1)
def too_big_png() -> bytes:
    """A valid PNG with more than 1,048,576 pixels."""
    return sample_bytes(*TOO_BIG_SIZE, "png", 0)


#: A PNG text chunk (keyword NUL text) that makes the emulated worker fail on an image.
WORKER_FAILS_MARKER = b"stablecog-emulator\x00worker-fails"


@functools.lru_cache(maxsize=1)
def worker_fails_png() -> bytes:
    """A valid 64x64 PNG the validation accepts and the emulated worker always fails on (refunded).

    Like a real image whose pixels the upscaler cannot process: each attempt is charged, then
    refunded with 500 ``An unknown error has occured``.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("stablecog-emulator", "worker-fails")
    out = io.BytesIO()
    render_sample(64, 64, 3).save(out, "PNG", pnginfo=info)
    data = out.getvalue()
    assert WORKER_FAILS_MARKER in data
    return data
