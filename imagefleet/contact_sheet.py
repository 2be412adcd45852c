"""A job's results to look at: ``contact-sheet.html`` (every image, its prompt under it, links to
the images beside it) and ``contact-sheet.png`` (a grid of thumbnails with the prompts wrapped
under them). Items without an image are shown as a labelled placeholder with their error."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFont

from imagefleet.download import Entry, write_atomically

HTML_NAME = "contact-sheet.html"
PNG_NAME = "contact-sheet.png"

THUMB = 256  # the square each thumbnail is fitted into
PAD = 16
TEXT_LINES = 4
FONT_SIZE = 14
LINE_HEIGHT = 18
COLUMNS = 5
# A PNG of 10,000 thumbnails would be 700,000 pixels tall: the image shows the first ones and
# says so; the HTML page has them all.
MAX_PNG_ITEMS = 200

BACKGROUND = (250, 250, 247)
INK = (34, 34, 34)
MUTED = (120, 120, 120)
PLACEHOLDER = (228, 226, 222)
ERROR_INK = (170, 40, 30)


@dataclass(frozen=True)
class Sheet:
    html: Path
    png: Path
    shown_in_png: int
    total: int


def write_contact_sheet(entries: list[Entry], out: Path, *, title: str) -> Sheet:
    """Both files into ``out``, for images already saved there as ``<key>.<ext>`` (png, jpg, webp)."""
    out.mkdir(parents=True, exist_ok=True)
    html_path, png_path = out / HTML_NAME, out / PNG_NAME
    write_atomically(html_path, render_html(entries, out, title=title).encode())
    shown = entries[:MAX_PNG_ITEMS]
    footer = f"{len(shown)} of {len(entries)} items; all of them in {HTML_NAME}" if len(shown) < len(entries) else None
    image = render_png(shown, out, title=title, footer=footer)
    tmp = png_path.with_name(f".{PNG_NAME}.part")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(png_path)
    return Sheet(html=html_path, png=png_path, shown_in_png=len(shown), total=len(entries))


def _image_path(entry: Entry, out: Path) -> Path | None:
    name = entry.file_name
    if entry.state != "succeeded" or name is None:
        return None
    path = out / name
    return path if path.is_file() else None


def _label(entry: Entry, out: Path) -> str:
    """What a placeholder says instead of the image."""
    if entry.state != "succeeded":
        return entry.state.replace("_", " ")
    return "unreadable" if _image_path(entry, out) is not None else "not downloaded"


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; background: #fafaf7; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.meta { color: #777; margin: 0 0 20px; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 20px; }
figure { margin: 0; }
figure img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eee; display: block; }
figcaption { margin-top: 6px; overflow-wrap: anywhere; }
figcaption .key { color: #777; font-size: 12px; display: block; }
.placeholder { aspect-ratio: 1; background: #e4e2de; display: flex; flex-direction: column;
               justify-content: center; align-items: center; text-align: center; padding: 12px;
               box-sizing: border-box; }
.placeholder strong { text-transform: uppercase; letter-spacing: .05em; color: #555; }
.placeholder .error { color: #aa281e; font-size: 12px; margin-top: 6px; overflow-wrap: anywhere; }
"""


def render_html(entries: list[Entry], out: Path, *, title: str) -> str:
    """One page; every string from the server is escaped, and links are relative file names."""
    esc = html.escape
    figures = []
    for entry in entries:
        path = _image_path(entry, out)
        caption = (f'<figcaption><span class="key">{esc(entry.key)}</span>{esc(entry.prompt)}</figcaption>')
        if path is not None:
            href = quote(path.name)
            figures.append(f'<figure><a href="{href}"><img src="{href}" alt="{esc(entry.prompt, quote=True)}" '
                           f'loading="lazy"></a>{caption}</figure>')
        else:
            error = f'<span class="error">{esc(entry.error)}</span>' if entry.error else ""
            figures.append(f'<figure><div class="placeholder"><strong>{esc(_label(entry, out))}</strong>{error}</div>'
                           f'{caption}</figure>')
    succeeded = sum(1 for e in entries if e.state == "succeeded")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{esc(title)}</h1><p class=\"meta\">{succeeded} of {len(entries)} images</p>\n<main>\n"
        + "\n".join(figures) + "\n</main></body></html>\n"
    )


# --- PNG -----------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Lines of at most ``width`` pixels, words kept whole where they fit; an ellipsis when cut."""
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > width:  # a word longer than the line: break it
            cut = max(1, next(i for i in range(len(word), 0, -1) if font.getlength(word[:i]) <= width))
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def grid_size(count: int, columns: int = COLUMNS) -> tuple[int, int, int, int]:
    """(columns, rows, width, height) of a sheet of ``count`` cells."""
    cols = max(1, min(columns, count))
    rows = max(1, math.ceil(count / cols))
    cell_w, cell_h = THUMB + PAD, THUMB + 8 + TEXT_LINES * LINE_HEIGHT + PAD
    header = 48
    return cols, rows, PAD + cols * cell_w, header + rows * cell_h + PAD + LINE_HEIGHT


def render_png(entries: list[Entry], out: Path, *, title: str, footer: str | None = None) -> Image.Image:
    cols, rows, width, height = grid_size(len(entries))
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small, big = _font(FONT_SIZE), _font(FONT_SIZE - 2), _font(FONT_SIZE + 6)
    draw.text((PAD, 14), title, font=big, fill=INK)
    cell_w, cell_h = THUMB + PAD, THUMB + 8 + TEXT_LINES * LINE_HEIGHT + PAD
    for i, entry in enumerate(entries):
        x = PAD + (i % cols) * cell_w
        y = 48 + (i // cols) * cell_h
        thumb = _thumbnail(entry, out)
        if thumb is not None:
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            text_lines, colour = wrap(entry.prompt, font, THUMB, TEXT_LINES), INK
        else:
            draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), fill=PLACEHOLDER)
            label = _label(entry, out).upper()
            lw = draw.textlength(label, font=big)
            draw.text((x + (THUMB - lw) / 2, y + THUMB / 2 - 40), label, font=big, fill=MUTED)
            for n, line in enumerate(wrap(entry.error or "", small, THUMB - 24, 5)):
                draw.text((x + 12, y + THUMB / 2 - 8 + n * (LINE_HEIGHT - 2)), line, font=small, fill=ERROR_INK)
            text_lines, colour = wrap(entry.prompt, font, THUMB, TEXT_LINES), MUTED
        for n, line in enumerate(text_lines):
            draw.text((x, y + THUMB + 8 + n * LINE_HEIGHT), line, font=font, fill=colour)
    if footer:
        draw.text((PAD, height - PAD - LINE_HEIGHT), footer, font=small, fill=MUTED)
    return sheet


def _thumbnail(entry: Entry, out: Path) -> Image.Image | None:
    path = _image_path(entry, out)
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMB, THUMB))
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError):  # not a readable image: shown as a placeholder
        return None
