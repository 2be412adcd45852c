"""What an image really is, read from its bytes: format, completeness, width and height.

The declared MIME type of an answer is not trusted: the Gemini API does not let the caller pick
the output format (google-genai 3.4.0, google/genai/types.py, ImageConfig.output_mime_type: "This
field is not supported in Gemini API"), Gemini 3 image models may answer JPEG, and a cut-off
transfer still says image/png. So the format is sniffed from the signature and the structure is
walked to its end marker. No decoding: PNG chunk CRCs, JPEG markers and the RIFF
size are enough to tell a complete file from a truncated or corrupted one. Stdlib only.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The file extension and Content-Type of each format we store.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class BadImage(ValueError):
    """The bytes are not a complete PNG, JPEG or WebP image."""


@dataclass(frozen=True)
class ImageFacts:
    format: str  # "png" | "jpeg" | "webp"
    width: int
    height: int
    sha256: str
    bytes: int

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def fields(self) -> dict:
        """The item fields that describe its stored image."""
        return {"format": self.format, "width": self.width, "height": self.height,
                "sha256": self.sha256, "bytes": self.bytes}


def sniff(data: bytes) -> str | None:
    """The format named by the file's signature, or None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def inspect(data: bytes) -> ImageFacts:
    """The facts of a complete image; BadImage (with a reason fit for the item's error) otherwise."""
    fmt = sniff(data)
    if fmt is None:
        raise BadImage(f"the model returned {len(data)} bytes that are not a PNG, JPEG or WebP image")
    width, height = _READERS[fmt](data)
    if width <= 0 or height <= 0:
        raise BadImage(f"the model returned a {fmt.upper()} of {width}x{height} pixels")
    return ImageFacts(fmt, width, height, hashlib.sha256(data).hexdigest(), len(data))


def _png(data: bytes) -> tuple[int, int]:
    """Every chunk's length and CRC, from IHDR (first) to IEND."""
    pos, size, first = len(PNG_SIGNATURE), (0, 0), True  # size: set from IHDR, which comes first
    view = memoryview(data)  # chunk bodies are CRC'd in place: an image-sized IDAT is not copied
    while True:
        if pos + 8 > len(data):
            raise BadImage("the model returned a truncated PNG (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length + 4
        if end > len(data):
            raise BadImage(f"the model returned a truncated PNG (chunk {kind!r} runs past the end)")
        body = view[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        # The CRC covers the type and the body: carried from one into the other.
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise BadImage(f"the model returned a corrupt PNG (bad CRC in chunk {kind!r})")
        if first:
            if kind != b"IHDR" or length != 13:
                raise BadImage("the model returned a corrupt PNG (IHDR is not the first chunk)")
            width, height = struct.unpack(">II", body[:8])
            size = (width, height)
            first = False
        if kind == b"IEND":
            return size
        pos = end


# Start-of-frame markers (baseline, progressive, lossless...): not DHT (C4), JPG (C8), DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data: bytes) -> tuple[int, int]:
    """Marker segments from SOI to SOS, a frame header on the way, and EOI at the end."""
    pos, size = 2, None
    while True:
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise BadImage("the model returned a truncated JPEG (marker segments end early)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            raise BadImage("the model returned a truncated JPEG (a segment runs past the end)")
        if marker in _SOF and length >= 7:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows, up to EOI
            break
        pos += 2 + length
    if size is None:
        raise BadImage("the model returned a corrupt JPEG (no frame header)")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise BadImage("the model returned a truncated JPEG (no EOI marker)")
    return size


def _webp(data: bytes) -> tuple[int, int]:
    """The RIFF size against the file's, then the first chunk's header: VP8, VP8L or VP8X."""
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 != len(data):
        raise BadImage(f"the model returned a truncated WebP ({len(data)} bytes, RIFF says {riff_size + 8})")
    kind, body = data[12:16], data[20:]
    if kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(body) >= 10:
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    raise BadImage("the model returned a corrupt WebP (no VP8, VP8L or VP8X header)")


_READERS = {"png": _png, "jpeg": _jpeg, "webp": _webp}
