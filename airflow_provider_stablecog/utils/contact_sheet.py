"""A before/after contact sheet: each input beside its 4× output, labelled with sizes (Pillow)."""

from __future__ import annotations

import os
from collections.abc import Sequence

ROW_HEIGHT = 240
PAD = 16
LABEL = 22


def make_contact_sheet(
    pairs: Sequence[tuple[str, str]], target: str | os.PathLike[str], *, title: str = ""
) -> str:
    """Write a PNG with one row per ``(input path, output path)``; both shown at the same height.

    The input is drawn with nearest-neighbour scaling (its real pixels), the output with a
    smooth filter, so the difference the upscale makes is visible. Returns the PNG's path.
    """
    from PIL import Image, ImageDraw

    if not pairs:
        raise ValueError("no (input, output) pairs to draw")
    rows = []
    for src, out in pairs:
        with Image.open(src) as a, Image.open(out) as b:
            rows.append(
                (
                    _fit(a.convert("RGB"), Image.Resampling.NEAREST),
                    _fit(b.convert("RGB"), Image.Resampling.LANCZOS),
                    a.size,
                    b.size,
                    os.path.basename(src),
                )
            )
    col = max(max(r[0].width, r[1].width) for r in rows)
    head = 2 * PAD + LABEL if title else PAD
    width = 2 * col + 3 * PAD
    height = head + len(rows) * (ROW_HEIGHT + LABEL + PAD)
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), title, fill=(20, 20, 20))
    y = head
    for before, after, (iw, ih), (ow, oh), name in rows:
        ratio = f"{ow / iw:.0f}x" if iw and ih and ow * ih == oh * iw else f"{ow / iw:.2f}x{oh / ih:.2f}"
        draw.text((PAD, y), f"input {name}: {iw}x{ih}", fill=(60, 60, 60))
        draw.text((2 * PAD + col, y), f"output: {ow}x{oh} ({ratio})", fill=(60, 60, 60))
        sheet.paste(before, (PAD, y + LABEL))
        sheet.paste(after, (2 * PAD + col, y + LABEL))
        y += ROW_HEIGHT + LABEL + PAD
    sheet.save(target, format="PNG")
    return os.fspath(target)


def _fit(image, resample):
    scale = ROW_HEIGHT / image.height
    return image.resize((max(1, round(image.width * scale)), ROW_HEIGHT), resample)
