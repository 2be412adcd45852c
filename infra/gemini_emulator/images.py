"""Real, human-readable PNGs: the prompt printed on a colour derived from it.

Anyone opening an emulated image can tell which prompt produced it. Flat colours keep zlib fast
(~10-20 ms at 1024x1024) and files small; :func:`pad_png` inflates them to a target size when a
benchmark needs realistic transfer sizes.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import textwrap
import threading
import zlib

from PIL import Image, ImageDraw, ImageFont

# Gemini image output sizes at "1K" (Gemini docs, image-generation page).
ASPECT_RATIO_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
    # The extreme ratios of the 3.1 Flash Image family (see functions/models.json); their 1K
    # sizes are approximations that keep about a megapixel, not published figures.
    "1:4": (512, 2048),
    "4:1": (2048, 512),
    "1:8": (352, 2816),
    "8:1": (2816, 352),
}
DEFAULT_ASPECT_RATIO = "1:1"
# imageSize (Gemini 3 image models) multiplies the 1K size.
IMAGE_SIZE_FACTORS = {"512": 0.5, "1K": 1, "2K": 2, "4K": 4}
DEFAULT_IMAGE_SIZE = "1K"

_MAX_PROMPT_CHARS = 600
_MIN_SIDE = 16

# FreeType faces are not safe to share between threads, and images render on an executor.
_fonts = threading.local()


def output_size(aspect_ratio: str, image_size: str, scale: float) -> tuple[int, int]:
    """Pixel size for a validated aspect ratio and image size, times the config's image_scale."""
    width, height = ASPECT_RATIO_SIZES[aspect_ratio]
    factor = IMAGE_SIZE_FACTORS[image_size] * scale
    return max(_MIN_SIDE, round(width * factor)), max(_MIN_SIDE, round(height * factor))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    cache = getattr(_fonts, "cache", None)
    if cache is None:
        cache = _fonts.cache = {}
    if size not in cache:
        try:
            cache[size] = ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
        except (TypeError, ImportError, OSError):
            cache[size] = ImageFont.load_default()
    return cache[size]


RGB = tuple[int, int, int]


def _palette(prompt: str) -> tuple[RGB, RGB, RGB, int]:
    """Background, shape and text colours plus a shape selector, all derived from the prompt."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    background = (digest[0], digest[1], digest[2])
    shape = ((digest[0] + 96) % 256, (digest[1] + 96) % 256, (digest[2] + 96) % 256)
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    return background, shape, ink, digest[3]


# config "image_format" -> the inlineData mimeType. Gemini 3 image models may answer JPEG.
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def render_png(prompt: str, width: int, height: int, footer: str = "", image_format: str = "png") -> bytes:
    """Render ``prompt`` (wrapped, truncated) and ``footer`` onto a ``width`` x ``height`` PNG
    (or JPEG or WebP, per ``image_format``)."""
    background, shape_colour, ink, variant = _palette(prompt)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)

    # A simple shape keyed on the prompt, so similar prompts still look different at a glance.
    side = min(width, height)
    cx, cy, r = width * 0.72, height * 0.70, side * 0.22
    box = (cx - r, cy - r, cx + r, cy + r)
    if variant % 3 == 0:
        draw.ellipse(box, fill=shape_colour)
    elif variant % 3 == 1:
        draw.rectangle(box, fill=shape_colour)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=shape_colour)

    margin = max(4, width // 24)
    font = _font(max(8, side // 22))
    char_width = max(1.0, font.getlength("abcdefghij") / 10)
    columns = max(8, int((width - 2 * margin) / char_width))
    text = prompt if len(prompt) <= _MAX_PROMPT_CHARS else prompt[: _MAX_PROMPT_CHARS - 1] + "…"
    body = "\n".join(textwrap.wrap(text, columns) or [""])
    draw.multiline_text((margin, margin), body, font=font, fill=ink, spacing=max(2, side // 100))
    if footer:
        small = _font(max(8, side // 40))
        top, bottom = draw.textbbox((0, 0), footer, font=small)[1::2]
        draw.text((margin, height - margin - (bottom - top)), footer, font=small, fill=ink)

    out = io.BytesIO()
    if image_format == "png":
        image.save(out, format="PNG", compress_level=3)  # level 3: near level-6 size, twice as fast
    else:
        image.save(out, format=image_format.upper(), quality=85)
    return out.getvalue()


def render_for_request(
    model: str, prompt: str, aspect_ratio: str, image_size: str, scale: float, image_format: str = "png"
) -> bytes:
    """The emulator's answer image for one request (unpadded): the prompt plus a footer naming
    the model and size. Shared by generateContent and batch lines, so both look the same."""
    width, height = output_size(aspect_ratio, image_size, scale)
    footer = f"{model} · {aspect_ratio} · {image_size} · {width}x{height}"
    return render_png(prompt or "(no text prompt)", width, height, footer, image_format)


def pad_png(png: bytes, target_bytes: int | None) -> bytes:
    """Grow ``png`` to ``target_bytes`` with a private ancillary chunk of random bytes.

    ``emPd`` = ancillary, private, safe-to-copy: every decoder skips it, so the image is unchanged
    while the payload has a realistic (incompressible) size. No-op if already big enough.
    """
    overhead = 12  # length + type + CRC
    if not target_bytes or len(png) + overhead > target_bytes:
        return png
    payload = os.urandom(target_bytes - len(png) - overhead)
    chunk_type = b"emPd"
    chunk = struct.pack(">I", len(payload)) + chunk_type + payload
    chunk += struct.pack(">I", zlib.crc32(chunk_type + payload) & 0xFFFFFFFF)
    iend = png.rindex(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
    return png[:iend] + chunk + png[iend:]


def draft_png(prompt: str) -> bytes:
    """A small, different picture for an interim "thought" image: a client that stores it
    instead of the final image is caught by comparing sizes or hashes."""
    return render_png("draft: " + prompt, 96, 96)
