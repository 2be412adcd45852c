"""The CLI's prompt files: text, JSONL and CSV into request items, problems named by line."""
from __future__ import annotations

import re

import pytest

from imagefleet.inputs import InputError, apply_defaults, parse_prompts, read_prompts, sample_prompts


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def items(prompts):
    return [p.item for p in prompts]


# --- text -----------------------------------------------------------------------------------------


def test_a_text_file_is_one_prompt_a_line_and_blank_lines_are_skipped(tmp_path):
    path = write(tmp_path, "p.txt", "A red fox\n\n   \n  A lighthouse at dusk  \r\nA bowl of ramen")

    prompts = read_prompts(path)

    assert items(prompts) == [{"prompt": "A red fox"}, {"prompt": "A lighthouse at dusk"},
                              {"prompt": "A bowl of ramen"}]
    assert [p.source for p in prompts] == ["p.txt line 1", "p.txt line 4", "p.txt line 5"]


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    path = write(tmp_path, "p.txt", "\ufeffA red fox\n".encode("utf-8"))

    assert items(read_prompts(path)) == [{"prompt": "A red fox"}]


def test_an_unknown_extension_is_read_as_text(tmp_path):
    path = write(tmp_path, "prompts.list", "one\ntwo\n")

    assert len(read_prompts(path)) == 2


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = write(tmp_path, "p.txt", b"fine\nalso fine\ncaf\xe9\n")

    with pytest.raises(InputError, match=r"p.txt line 3: not UTF-8"):
        read_prompts(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff"])
def test_a_file_without_prompts_is_an_error(tmp_path, content):
    with pytest.raises(InputError, match="no prompts"):
        read_prompts(write(tmp_path, "p.txt", content))


def test_a_missing_file_and_a_directory_are_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_prompts(str(tmp_path / "nope.txt"))
    with pytest.raises(InputError, match="is a directory"):
        read_prompts(str(tmp_path))


# --- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_lines_carry_the_request_fields(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "A fox", "key": "fox", "aspect_ratio": "16:9"}\n'
                                      '\n'
                                      '{"prompt": "A cat", "domain": "pets", "quality": "high"}\n'
                                      '"Just a string"\n')

    prompts = read_prompts(path)

    assert items(prompts) == [
        {"prompt": "A fox", "key": "fox", "aspect_ratio": "16:9"},
        {"prompt": "A cat", "domain": "pets", "quality": "high"},
        {"prompt": "Just a string"},
    ]
    assert [p.source for p in prompts] == ["p.jsonl line 1", "p.jsonl line 3", "p.jsonl line 4"]


def test_a_bad_json_line_is_named_by_its_line_number(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "ok"}\n\n{"prompt": "broken"\n{"prompt": "ok"}\n')

    with pytest.raises(InputError, match=r"^p.jsonl line 3: not valid JSON"):
        read_prompts(path)


@pytest.mark.parametrize("line, problem", [
    ('{"key": "x"}', r'line 1: "prompt" is missing or empty'),
    ('{"prompt": "  "}', r'line 1: "prompt" is missing or empty'),
    ('{"prompt": 7}', r'line 1: "prompt" must be a string, got 7'),
    ('{"prompt": "a", "aspect": "16:9"}', r"line 1: unknown field 'aspect'"),
    ('{"prompt": "a", "key": 3}', r'line 1: "key" must be a string'),
    ('[1, 2]', r"line 1: expected a JSON object"),
])
def test_jsonl_items_are_checked(tmp_path, line, problem):
    with pytest.raises(InputError, match=problem):
        read_prompts(write(tmp_path, "p.jsonl", line + "\n"))


def test_the_format_can_be_given_for_any_name(tmp_path):
    path = write(tmp_path, "prompts.data", '{"prompt": "A fox"}\n')

    assert items(read_prompts(path, "jsonl")) == [{"prompt": "A fox"}]


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_with_a_header_row_quoted_commas_and_empty_cells(tmp_path):
    path = write(tmp_path, "p.csv", "\ufeffPrompt,key,aspect_ratio\n"
                                    '"A fox, asleep in snow",fox,16:9\n'
                                    ",,\n"
                                    "A cat,,\n")

    prompts = read_prompts(path)

    assert items(prompts) == [{"prompt": "A fox, asleep in snow", "key": "fox", "aspect_ratio": "16:9"},
                              {"prompt": "A cat"}]
    assert [p.source for p in prompts] == ["p.csv line 2", "p.csv line 4"]


def test_a_csv_without_a_prompt_column_is_an_error(tmp_path):
    path = write(tmp_path, "p.csv", "text,key\nA fox,fox\n")

    with pytest.raises(InputError, match=r'p.csv line 1: the header row has no "prompt" column'):
        read_prompts(path)


def test_a_csv_with_an_unknown_column_is_an_error(tmp_path):
    path = write(tmp_path, "p.csv", "prompt,ratio\nA fox,16:9\n")

    with pytest.raises(InputError, match=r"unknown column 'ratio'"):
        read_prompts(path)


def test_a_csv_row_with_more_cells_than_columns_is_named(tmp_path):
    path = write(tmp_path, "p.csv", "prompt,key\nA fox,fox\nA fox, asleep,fox2\n")

    with pytest.raises(InputError, match=r"p.csv line 3: 3 cells, but the header has 2 columns"):
        read_prompts(path)


def test_a_csv_row_with_an_empty_prompt_is_named(tmp_path):
    path = write(tmp_path, "p.csv", "prompt,key\nA fox,fox\n,cat\n")

    with pytest.raises(InputError, match=r'p.csv line 3: "prompt" is missing or empty'):
        read_prompts(path)


def test_csv_line_numbers_count_lines_inside_quoted_cells(tmp_path):
    path = write(tmp_path, "p.csv", 'prompt,key\n"A fox\nover two lines",fox\n,broken\n')

    with pytest.raises(InputError, match=r"p.csv line 4:"):
        read_prompts(path)


# --- samples and defaults -------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 5, 200])
def test_sample_prompts_are_distinct_with_distinct_keys(count):
    prompts = sample_prompts(count)

    assert len(prompts) == count
    assert len({p.item["prompt"] for p in prompts}) == count
    assert len({p.item["key"] for p in prompts}) == count


def test_defaults_fill_only_what_an_item_does_not_set(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "a", "aspect_ratio": "1:1"}\n{"prompt": "b"}\n')

    prompts = apply_defaults(read_prompts(path), aspect_ratio="16:9", quality=None)

    assert items(prompts) == [{"prompt": "a", "aspect_ratio": "1:1"}, {"prompt": "b", "aspect_ratio": "16:9"}]


@pytest.mark.parametrize("line,problem", [
    ('{"prompt": "a\\u0085b"}', "control character U+0085"),
    ('{"prompt": "a", "domain": "d\\u001b[31m"}', "domain holds the control character U+001B"),
    ('{"prompt": "a", "domain": "d\\u0000"}', "U+0000"),
    ('{"prompt": "a", "key": "contact-sheet"}', "reserved"),
    ('{"prompt": "a", "key": "MANIFEST"}', "reserved"),
    ('{"prompt": "a", "key": "../x"}', "is not 1-128 letters"),
])
def test_items_the_api_would_refuse_are_refused_naming_the_line(line, problem):
    with pytest.raises(InputError, match=re.escape(problem)) as raised:
        parse_prompts('{"prompt": "fine"}\n' + line, "jsonl", "p.jsonl")
    assert "p.jsonl line 2" in str(raised.value)


def test_keys_equal_ignoring_case_are_refused_naming_both_lines():
    with pytest.raises(InputError, match="p.csv line 3: key 'fox' repeats 'Fox' of p.csv line 2"):
        parse_prompts("prompt,key\na,Fox\nb,fox\n", "csv", "p.csv")


def test_a_text_file_is_checked_too():
    with pytest.raises(InputError, match=re.escape("p.txt line 2: the prompt holds the control character U+009B")):
        parse_prompts("a fox\na \x9b[31m fox\n", "txt", "p.txt")


def test_the_cli_checks_what_the_api_checks():
    import schemas
    from imagefleet import download, inputs

    assert inputs.RESERVED_KEYS == schemas.RESERVED_KEYS
    assert inputs.KEY_PATTERN.pattern == download.KEY_PATTERN.pattern == schemas.KEY_PATTERN
    assert inputs._PROMPT_CONTROL.pattern == schemas._CONTROL.pattern
    assert inputs._ANY_CONTROL.pattern == schemas._ANY_CONTROL.pattern
