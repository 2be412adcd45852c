"""functions/sources.py: JSONL and CSV sources read line by line from chunks split anywhere."""
from __future__ import annotations

import json
import tracemalloc

import pytest

import sources
from imagefleet import inputs
from schemas import JobRequest, error_fields
from sources import LINE_LIMIT, SourceFormatError, read_header, read_lines, source_format

JSONL = (
    '\ufeff{"prompt": "A lighthouse", "aspect_ratio": "16:9"}\r\n'
    "\n"
    '"just a string"\r'
    '{"prompt": "Ünïcödé ☃ 𝄞 prompt", "key": "snow", "domain": " ", "quality": null}\n'
    "[1, 2]\n"
    '{"prompt": "x", "colour": "red"}\n'
    "{not json\n"
    "   \n"
    '{"prompt": "last, no line end", "key": "Last_1"}'
).encode()

CSV = (
    "\ufeffPrompt, key ,aspect_ratio\r\n"
    '"A fox, asleep",fox,1:1\r\n'
    "\r\n"
    '"Two\nline cell",,16:9\n'
    "plain,con,\n"
    'one,two,three,four\n'
    '"Ünïcödé ☃",,\n'
).encode()


def lines_of(data: bytes, fmt: str, size: int | None = None, **kw) -> list[sources.SourceLine]:
    size = size or len(data) or 1
    return list(read_lines((data[i:i + size] for i in range(0, len(data), size)), fmt, **kw))


def summary(lines):
    return [(line.number, line.item.key if line.item else None, line.error is not None) for line in lines]


def test_jsonl_lines_number_key_and_refuse_each_line():
    got = lines_of(JSONL, "jsonl")
    assert summary(got) == [
        (1, "item-00000", False), (2, None, False), (3, "item-00001", False), (4, "snow", False),
        (5, None, True), (6, None, True), (7, None, True), (8, None, False), (9, "Last_1", False),
    ]
    assert got[0].item.aspect_ratio == "16:9" and got[3].item.prompt == "Ünïcödé ☃ 𝄞 prompt"
    assert got[3].item.domain is None and got[3].item.quality == "standard"  # blank and null are left out
    assert got[4].error == 'expected a JSON object with a "prompt", got list'
    assert got[5].error == "colour: Extra inputs are not permitted"
    assert got[6].error.startswith("not valid JSON:")
    assert got[-1].end == len(JSONL)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_any_chunking_gives_the_same_lines(size):
    for data, fmt in ((JSONL, "jsonl"), (CSV, "csv")):
        assert lines_of(data, fmt, size) == lines_of(data, fmt)


def test_resuming_from_every_end_yields_exactly_the_rest():
    for data, fmt in ((JSONL, "jsonl"), (CSV, "csv")):
        header, header_end = read_header([data]) if fmt == "csv" else (None, 0)
        whole = lines_of(data, fmt)
        for i, line in enumerate(whole):
            rest = lines_of(data[line.end:], fmt, 3, start=line.end, first_number=line.number + 1,
                            first_index=line.next_index, header=header)
            assert rest == whole[i + 1:], (fmt, line)
        if fmt == "csv":
            assert lines_of(data[header_end:], fmt, start=header_end, first_number=2, header=header) == whole


def test_csv_rows_header_multiline_cells_and_cell_count():
    got = lines_of(CSV, "csv")
    assert summary(got) == [(2, "fox", False), (3, None, False), (5, "item-00001", False), (6, None, True),
                            (7, None, True), (8, "item-00004", False)]
    assert got[2].item.prompt == "Two\nline cell" and got[2].item.aspect_ratio == "16:9"
    assert got[3].error.startswith("key: 'con' is a reserved name")
    assert got[4].error == "4 cells, but the header has 3 columns (quote a prompt that holds a comma)"
    assert read_header([CSV]) == (["prompt", "key", "aspect_ratio"], CSV.index(b"\r\n") + 2)


def test_a_csv_quote_never_closed_refuses_its_row_only_up_to_the_limit():
    swallowed = b"x" * 1000 + b"\n"
    data = b'prompt\n"open\n' + swallowed * (LINE_LIMIT // len(swallowed) + 2) + b"after\n"
    got = lines_of(data, "csv", 4096)
    assert got[0].item is None and "still open after" in got[0].error and "starts on line 2" in got[0].error
    assert got[-1].item.prompt == "after"
    at_eof = lines_of(b'prompt\nok\n"never closed\nmore\n', "csv")
    assert at_eof[-1].number == 4 and at_eof[-1].error == "a quoted cell is never closed (the row starts on line 3)"


@pytest.mark.parametrize("header, problem", [
    (b"key,domain\nx,y\n", 'no "prompt" column'),
    (b"prompt,colour\nx,y\n", "unknown column 'colour'"),
    (b"", "empty"),
    (b"\xffprompt\n", "not UTF-8"),
    (b'"prompt\n', "must be one line"),
])
def test_an_unusable_csv_header_refuses_the_file(header, problem):
    with pytest.raises(SourceFormatError, match=problem):
        read_header([header])
    with pytest.raises(SourceFormatError, match=problem):
        lines_of(header, "csv")


def test_an_over_long_line_is_refused_without_being_held():
    size = 20 * 1024 * 1024
    chunks = (b"x" * 65536 for _ in range(size // 65536))
    tracemalloc.start()
    try:
        got = list(read_lines(_then(chunks, b'\r\n{"prompt": "next"}\n'), "jsonl"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(line.number, line.end) for line in got] == [(1, size + 2), (2, size + 21)]
    assert got[0].error == f"the line is longer than {LINE_LIMIT} bytes" and got[1].item.prompt == "next"
    assert peak < 1024 * 1024  # a chunk, the part of a line kept, their concatenation: not 20 MB


def _then(chunks, tail):
    yield from chunks
    yield tail[:1]  # the \r alone: its \n comes in the next chunk
    yield tail[1:]


def test_invalid_utf8_split_across_chunks_and_a_valid_sequence_split_too():
    data = '{"prompt": "☃"}\n'.encode() + b'{"prompt": "\xe2\x98"}\n'
    got = lines_of(data, "jsonl", 1)
    assert got[0].item.prompt == "☃" and got[1].error == "not UTF-8 text (byte 13 of the line)"


def test_keys_and_refusals_match_the_cli_and_the_api():
    text = '{"prompt": "a"}\n\n{"prompt": "b", "key": "k"}\n{"prompt": "c"}\n'
    prompts = inputs.parse_prompts(text, "jsonl")
    expected = JobRequest(requests=[p.item for p in prompts]).item_keys()
    assert [line.item.key for line in lines_of(text.encode(), "jsonl") if line.item] == expected
    bad = {"prompt": "x" * 11, "key": "../up", "aspect_ratio": "7:5"}
    with pytest.raises(Exception) as exc:
        JobRequest.model_validate({"requests": [bad]}, context={"max_prompt_chars": 10})
    api = "; ".join(f"{f['field'].removeprefix('requests[0].')}: {f['problem']}" for f in error_fields(exc.value))
    assert lines_of(json.dumps(bad).encode(), "jsonl", max_prompt_chars=10)[0].error == api


def test_source_format_from_the_object_name():
    assert [source_format(n) for n in ("a.jsonl", "b/c.NDJSON", "d.csv")] == ["jsonl", "jsonl", "csv"]
    for name in ("prompts.txt", "prompts", "x.jsonl.gz"):
        with pytest.raises(ValueError, match="must end in"):
            source_format(name)


def test_resuming_a_csv_needs_its_header():
    with pytest.raises(ValueError, match="header"):
        lines_of(CSV[40:], "csv", start=40)


@pytest.mark.parametrize("line", [
    '{"prompt": "a"}', '{"prompt": " padded ", "domain": "  "}', '{"prompt": "a", "key": null}',
    '{"prompt": "a", "key": ""}', '{"prompt": "a", "quality": null, "aspect_ratio": "4:3"}',
    '{"prompt": "a", "prompt": "b"}', '{"prompt": "a\\ud800"}', '{"prompt": "a\\u0007"}', '{"prompt": "a\tb"}',
    '{"prompt": "a", "domain": NaN}', '{"prompt": "a"} x', '"bare"', '{"prompt": "a", "key": "K-1"}\r\n',
    '{"prompt": 5}', '{"prompt": "é", "domain": "d", "quality": "high"}', '[' * 5000,
])
def test_the_one_pass_parse_agrees_with_the_cli_like_one(line):
    context = {"max_prompt_chars": 4000}
    assert sources._json_item(line, 7, context) == sources._json_value(line, 7, context)
