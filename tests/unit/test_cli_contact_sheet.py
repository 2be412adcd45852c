"""The contact sheet, rendered for real with Pillow into a temp folder: the grid's size, each
thumbnail in its cell, placeholders for items without an image, and an HTML page that escapes
every prompt and links the PNGs beside it."""
from __future__ import annotations

import pytest
from PIL import Image

from imagefleet import contact_sheet
from imagefleet.contact_sheet import THUMB, grid_size, render_html, wrap, write_contact_sheet
from imagefleet.download import Entry

COLOURS = {"fox": (230, 120, 20), "owl": (240, 240, 240), "koi": (200, 30, 30), "sea": (20, 60, 200),
           "moss": (40, 150, 60)}
SIZES = {"fox": (320, 180), "owl": (180, 320), "koi": (256, 256), "sea": (512, 512), "moss": (100, 80)}


@pytest.fixture
def job(tmp_path):
    entries = []
    for key, colour in COLOURS.items():
        Image.new("RGB", SIZES[key], colour).save(tmp_path / f"{key}.png")
        entries.append(Entry(key=key, prompt=f"A {key} <b>bold</b> & \"quoted\"", state="succeeded",
                             gcs_uri=f"gs://b/j/{key}.png"))
    entries.append(Entry(key="cat", prompt="A cat", state="failed", error="IMAGE_SAFETY: blocked by the model"))
    entries.append(Entry(key="dog", prompt="A dog", state="dead_lettered", error="503 UNAVAILABLE after 5 attempts"))
    return tmp_path, entries


def cell_origin(index: int, columns: int) -> tuple[int, int]:
    cell_w = THUMB + contact_sheet.PAD
    cell_h = THUMB + 8 + contact_sheet.TEXT_LINES * contact_sheet.LINE_HEIGHT + contact_sheet.PAD
    return contact_sheet.PAD + (index % columns) * cell_w, 48 + (index // columns) * cell_h


def test_the_png_is_a_grid_with_each_thumbnail_in_its_cell(job):
    out, entries = job

    sheet = write_contact_sheet(entries, out, title="job j")

    columns, rows, width, height = grid_size(len(entries))
    assert (columns, rows) == (5, 2)
    with Image.open(sheet.png) as image:
        assert image.format == "PNG" and image.size == (width, height)
        rgb = image.convert("RGB")
        for index, key in enumerate(COLOURS):
            x, y = cell_origin(index, columns)
            assert rgb.getpixel((x + THUMB // 2, y + THUMB // 2)) == COLOURS[key], key
        # The failed items are placeholders: a grey square, not an image.
        x, y = cell_origin(5, columns)
        assert rgb.getpixel((x + 4, y + 4)) == contact_sheet.PLACEHOLDER
        # Prompt text is drawn under a thumbnail: the caption strip is not all background.
        x, y = cell_origin(0, columns)
        caption = rgb.crop((x, y + THUMB + 8, x + THUMB, y + THUMB + 8 + contact_sheet.LINE_HEIGHT))
        assert caption.getcolors(maxcolors=10_000) and len(caption.getcolors(maxcolors=10_000)) > 1


def test_a_wide_thumbnail_keeps_its_aspect_ratio(job):
    out, entries = job

    sheet = write_contact_sheet(entries, out, title="job j")

    with Image.open(sheet.png) as image:
        rgb = image.convert("RGB")
        x, y = cell_origin(0, 5)  # fox: 320x180 -> 256x144, centred vertically
        assert rgb.getpixel((x + THUMB // 2, y + 10)) == contact_sheet.BACKGROUND
        assert rgb.getpixel((x + THUMB // 2, y + THUMB // 2 - 60)) == COLOURS["fox"]


def test_the_html_escapes_prompts_and_links_the_pngs_beside_it(job):
    out, entries = job

    sheet = write_contact_sheet(entries, out, title="job <j>")

    page = sheet.html.read_text()
    assert "<b>bold</b>" not in page
    assert "A fox &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;" in page
    assert page.count('<img src="') == 5 and '<a href="fox.png">' in page
    assert "IMAGE_SAFETY: blocked by the model" in page and "dead lettered" in page
    assert "<title>job &lt;j&gt;</title>" in page
    assert "5 of 7 images" in page


def test_an_image_that_was_not_downloaded_is_a_placeholder(tmp_path):
    entries = [Entry(key="gone", prompt="A ghost", state="succeeded", gcs_uri="gs://b/j/gone.png")]

    page = render_html(entries, tmp_path, title="t")

    assert "<img" not in page and "not downloaded" in page


def test_an_unreadable_image_is_a_placeholder_in_the_png(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    entries = [Entry(key="broken", prompt="Broken", state="succeeded", gcs_uri="gs://b/j/broken.png")]

    sheet = write_contact_sheet(entries, tmp_path, title="t")

    with Image.open(sheet.png) as image:
        x, y = cell_origin(0, 1)
        assert image.convert("RGB").getpixel((x + 4, y + 4)) == contact_sheet.PLACEHOLDER


def test_a_big_job_shows_its_first_items_in_the_png_and_all_in_the_html(tmp_path, monkeypatch):
    monkeypatch.setattr(contact_sheet, "MAX_PNG_ITEMS", 3)
    entries = [Entry(key=f"k{i}", prompt=f"P{i}", state="failed", error="x") for i in range(8)]

    sheet = write_contact_sheet(entries, tmp_path, title="t")

    assert (sheet.shown_in_png, sheet.total) == (3, 8)
    with Image.open(sheet.png) as image:
        assert image.size == grid_size(3)[2:]
    assert sheet.html.read_text().count("<figure>") == 8


def test_wrapping_fits_the_width_breaks_long_words_and_ends_with_an_ellipsis():
    font = contact_sheet._font(contact_sheet.FONT_SIZE)
    text = "A " + "x" * 80 + " lighthouse on a cliff at dusk with gulls and a storm rolling in over the sea"

    lines = wrap(text, font, 120, 4)

    assert len(lines) == 4
    assert all(font.getlength(line) <= 120 for line in lines)
    assert lines[-1].endswith("…")
    assert wrap("short", font, 120, 4) == ["short"]


def test_jpeg_and_webp_images_are_shown_and_linked_by_their_own_names(tmp_path):
    entries = []
    for key, fmt, ext in (("sea", "JPEG", "jpg"), ("moss", "WEBP", "webp")):
        Image.new("RGB", (256, 256), COLOURS[key]).save(tmp_path / f"{key}.{ext}", format=fmt, quality=95)
        entries.append(Entry(key=key, prompt=key, state="succeeded", gcs_uri=f"gs://b/j/{key}.{ext}"))

    sheet = write_contact_sheet(entries, tmp_path, title="job j")

    html = sheet.html.read_text()
    assert 'href="sea.jpg"' in html and 'href="moss.webp"' in html
    with Image.open(sheet.png) as image:
        rgb = image.convert("RGB")
        for index, key in enumerate(("sea", "moss")):
            x, y = cell_origin(index, grid_size(2)[0])
            got = rgb.getpixel((x + THUMB // 2, y + THUMB // 2))
            assert all(abs(a - b) <= 8 for a, b in zip(got, COLOURS[key])), (key, got)  # lossy formats
