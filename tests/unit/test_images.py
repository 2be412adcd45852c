"""core.images against images Pillow writes, and the same images cut short or damaged."""
import io
import struct

import pytest
from PIL import Image

from core import images


def encode(fmt: str, size=(37, 21), mode="RGB", **options) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 40)[: len(mode)]).save(out, format=fmt, **options)
    return out.getvalue()


CASES = {
    "png": encode("PNG"),
    "jpeg": encode("JPEG"),
    "jpeg progressive": encode("JPEG", progressive=True),
    "webp lossy": encode("WEBP"),
    "webp lossless": encode("WEBP", lossless=True),
    "webp extended": encode("WEBP", mode="RGBA", exif=b"Exif\x00\x00MM"),
}


@pytest.mark.parametrize("name", CASES)
def test_a_complete_image_gives_its_format_and_size(name):
    facts = images.inspect(CASES[name])
    assert facts.format == name.split()[0] and (facts.width, facts.height) == (37, 21)
    assert facts.bytes == len(CASES[name]) and len(facts.sha256) == 64


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("keep", [0.5, 0.9, -1])
def test_a_truncated_image_is_refused(name, keep):
    data = CASES[name]
    cut = data[: int(len(data) * keep)] if keep > 0 else data[:keep]
    with pytest.raises(images.BadImage, match="truncated|corrupt"):
        images.inspect(cut)


def test_the_format_comes_from_the_bytes_not_a_declared_type():
    assert images.sniff(CASES["jpeg"]) == "jpeg" and images.sniff(b"GIF89a....") is None
    with pytest.raises(images.BadImage, match="not a PNG, JPEG or WebP"):
        images.inspect(b"<html>quota page</html>")


def test_a_flipped_byte_in_a_png_chunk_fails_its_crc():
    data = bytearray(CASES["png"])
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF
    with pytest.raises(images.BadImage, match="bad CRC in chunk b'IDAT'"):
        images.inspect(bytes(data))


def test_a_jpeg_without_a_frame_header_is_corrupt():
    soi, app0 = b"\xff\xd8", b"\xff\xe0" + struct.pack(">H", 4) + b"JF"
    sos = b"\xff\xda" + struct.pack(">H", 2)
    with pytest.raises(images.BadImage, match="no frame header"):
        images.inspect(soi + app0 + sos + b"\x00" * 10 + b"\xff\xd9")


def test_facts_name_the_extension_and_content_type():
    facts = images.inspect(CASES["jpeg"])
    assert (facts.extension, facts.content_type) == ("jpg", "image/jpeg")
    assert set(facts.fields()) == {"format", "width", "height", "sha256", "bytes"}


def test_a_png_chunk_crc_covers_its_type_as_well_as_its_body():
    # The CRC is carried from the chunk's type into its body (checked in place, no copy): a
    # renamed chunk with an intact body must still fail, and an intact text chunk must pass.
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "a lighthouse")
    out = io.BytesIO()
    Image.new("RGB", (37, 21)).save(out, format="PNG", pnginfo=info)
    data = out.getvalue()
    assert images.inspect(data).format == "png"
    renamed = data.replace(b"tEXtprompt", b"tEXTprompt", 1)
    assert renamed != data
    with pytest.raises(images.BadImage, match="bad CRC in chunk b'tEXT'"):
        images.inspect(renamed)
