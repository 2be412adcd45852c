"""Prompt files into request items: plain text (one prompt a line), JSONL (one object a line) or
CSV (a header row naming a ``prompt`` column), each item remembering the line it came from so
that a problem, ours or the API's, can be named by file and line."""
from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("prompt", "key", "aspect_ratio", "domain", "quality")
FORMATS = ("txt", "jsonl", "csv")
_EXTENSIONS = {".txt": "txt", ".text": "txt", ".prompts": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".csv": "csv"}

SAMPLE_SUBJECTS = [
    "A lighthouse on a cliff at dusk",
    "A red fox asleep in fresh snow",
    "A tiny robot watering a bonsai tree",
    "An isometric city block made of cardboard",
    "A bowl of ramen seen from above",
    "A paper boat on a rainy street",
    "A glass apple on a marble table",
    "A copper teapot steaming on a stove",
    "A snow owl on a birch branch",
    "A neon koi pond at midnight",
    "A moss-covered castle in the clouds",
    "A hot-air balloon over lavender fields",
    "A cosy reading nook with a sleeping cat",
    "A lantern fish in the deep sea",
    "A mountain cabin under the northern lights",
    "A vintage bicycle leaning on a yellow wall",
]
SAMPLE_STYLES = [
    "watercolour", "soft studio light", "isometric illustration", "golden hour photograph",
    "linocut print", "pastel gouache", "35mm film still", "papercraft diorama",
]


# The API's own rules (functions/schemas.py), checked here to name the file and line.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
RESERVED_KEYS = frozenset(  # the names `download` writes beside <key>.png, and Windows device names
    {"manifest", "contact-sheet", "con", "prn", "aux", "nul"}
    | {f"{port}{n}" for port in ("com", "lpt") for n in range(1, 10)}
)
_PROMPT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class InputError(Exception):
    """A prompt file that can't be used; the message names the file and the line."""

    exit_code = 2


@dataclass(frozen=True)
class Prompt:
    """One request item (the body the API takes) and where it came from."""

    item: dict
    source: str  # "prompts.csv line 5"
    line: int = 0  # that line's number (a CSV row's last line); 0: not from a file


def detect_format(path: str, given: str | None = None) -> str:
    if given:
        return given
    if path == "-":
        return "txt"
    suffix = Path(path).suffix.lower()
    return _EXTENSIONS.get(suffix, "txt")


def read_prompts(path: str, fmt: str | None = None) -> list[Prompt]:
    """The prompts of a file (``-`` is standard input). Blank lines are skipped; a byte order
    mark is ignored. Raises InputError naming the first problem and its line."""
    fmt = detect_format(path, fmt)
    name = "stdin" if path == "-" else Path(path).name
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a prompt file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{name} line {line}: not UTF-8 text (byte {exc.start})") from None
    prompts = parse_prompts(text, fmt, name)
    if not prompts:
        raise InputError(f"{name}: no prompts in it")
    return prompts


def parse_prompts(text: str, fmt: str, name: str = "input") -> list[Prompt]:
    """Like read_prompts, for text already in memory."""
    return _unique_keys({"txt": _parse_txt, "jsonl": _parse_jsonl, "csv": _parse_csv}[fmt](text, name))


def _unique_keys(prompts: list[Prompt]) -> list[Prompt]:
    """Keys equal ignoring case would be one file on macOS and Windows disks: the API refuses them."""
    seen: dict[str, Prompt] = {}
    for p in prompts:
        key = p.item.get("key")
        if key is None:
            continue
        if (first := seen.get(key.lower())) is not None:
            raise InputError(f"{p.source}: key {key!r} repeats {first.item['key']!r} of {first.source} "
                             "(keys must be unique, ignoring case)")
        seen[key.lower()] = p
    return prompts


def _lines(text: str) -> list[str]:
    # splitlines() would also split on \x0b, \x1c... inside a line; only real line ends count.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _parse_txt(text: str, name: str) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(_lines(text), start=1):
        if line.strip():
            where = f"{name} line {number}"
            _check_item(item := {"prompt": line.strip()}, where)
            prompts.append(Prompt(item, where, number))
    return prompts


def _parse_jsonl(text: str, name: str) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if isinstance(value, str):
            value = {"prompt": value}  # a line that is just a JSON string is a prompt
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a JSON object with a \"prompt\", got {type(value).__name__}")
        prompts.append(Prompt(_item(value, where), where, number))
    return prompts


def _parse_csv(text: str, name: str) -> list[Prompt]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise InputError(f"{name} line 1: {exc}") from None
    columns = [h.strip().lower() for h in header]
    if "prompt" not in columns:
        raise InputError(f"{name} line 1: the header row has no \"prompt\" column "
                         f"(columns: {', '.join(FIELDS)}; found: {', '.join(header) or 'nothing'})")
    unknown = [h for h in columns if h and h not in FIELDS]
    if unknown:
        raise InputError(f"{name} line 1: unknown column {unknown[0]!r} (columns: {', '.join(FIELDS)})")
    prompts = []
    try:
        for row in reader:
            where = f"{name} line {reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(columns):
                raise InputError(f"{where}: {len(row)} cells, but the header has {len(columns)} columns "
                                 "(quote a prompt that holds a comma)")
            values = {col: cell for col, cell in zip(columns, row, strict=False) if col and cell.strip()}
            prompts.append(Prompt(_item(values, where), where, reader.line_num))
    except csv.Error as exc:
        raise InputError(f"{name} line {reader.line_num}: {exc}") from None
    return prompts


def _item(values: dict, where: str) -> dict:
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    prompt = values.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"{where}: \"prompt\" must be a string, got {json.dumps(prompt)}")
    if not prompt or not prompt.strip():
        raise InputError(f"{where}: \"prompt\" is missing or empty")
    item = {"prompt": prompt.strip()}
    for field in FIELDS[1:]:
        value = values.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(f"{where}: \"{field}\" must be a string, got {json.dumps(value)}")
        if value.strip():
            item[field] = value.strip()
    _check_item(item, where)
    return item


def _check_item(item: dict, where: str) -> None:
    if bad := _PROMPT_CONTROL.search(item["prompt"]):
        raise InputError(f"{where}: the prompt holds the control character U+{ord(bad.group()):04X}")
    if "domain" in item and (bad := _ANY_CONTROL.search(item["domain"])):
        raise InputError(f"{where}: the domain holds the control character U+{ord(bad.group()):04X}")
    key = item.get("key")
    if key is not None and not KEY_PATTERN.match(key):
        raise InputError(f"{where}: key {key[:40]!r} is not 1-128 letters, digits, '-' or '_' "
                         "starting with a letter or digit")
    if key is not None and key.lower() in RESERVED_KEYS:
        raise InputError(f"{where}: key {key!r} is a reserved name "
                         f"(reserved, ignoring case: {', '.join(sorted(RESERVED_KEYS))})")


def sample_prompts(count: int) -> list[Prompt]:
    """``count`` pleasant prompts from the built-in list; past its end, the subjects come back
    in other styles, so no two prompts are the same."""
    prompts = []
    for i in range(count):
        subject = SAMPLE_SUBJECTS[i % len(SAMPLE_SUBJECTS)]
        style = SAMPLE_STYLES[(i + i // len(SAMPLE_SUBJECTS)) % len(SAMPLE_STYLES)]
        round_ = i // (len(SAMPLE_SUBJECTS) * len(SAMPLE_STYLES))
        text = f"{subject}, {style}" + (f", variation {round_ + 1}" if round_ else "")
        prompts.append(Prompt({"prompt": text, "key": f"sample-{i:05d}"}, f"sample prompt {i + 1}"))
    return prompts


def apply_defaults(prompts: list[Prompt], **defaults: str | None) -> list[Prompt]:
    """Fill fields an item does not set (``--aspect-ratio``, ``--quality``, ``--domain``)."""
    given = {k: v for k, v in defaults.items() if v}
    if not given:
        return prompts
    return [Prompt({**given, **p.item}, p.source, p.line) for p in prompts]
