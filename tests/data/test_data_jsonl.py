import hashlib
import json
from pathlib import Path

import pytest

from specc.data.jsonl import MAX_REPORTED, load_dataset, read_examples, verify_dataset
from specc.errors import UserError


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def error_of(path: Path, fmt: str) -> UserError:
    with pytest.raises(UserError) as info:
        read_examples(path, fmt)
    return info.value


@pytest.mark.parametrize("fmt, example", [
    ("text", {"text": "hello"}),
    ("prompt_completion", {"prompt": "q", "completion": "a"}),
    ("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                           {"role": "assistant", "content": "a"}]}),
])
def test_reads_each_format_and_skips_blank_lines(tmp_path, fmt, example):
    path = write_lines(tmp_path / "d.jsonl", [example, "", "   ", example])
    assert read_examples(path, fmt) == [example, example]


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [e["text"] for e in read_examples(path, "text")] == ["a", "b"]


def test_missing_file_lists_what_is_in_the_directory(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "sub").mkdir()
    err = error_of(tmp_path / "trian.jsonl", "text")
    assert "not found" in err.message and "trian.jsonl" in str(err)
    assert "train.jsonl" in err.hint and "sub/" in err.hint


def test_missing_directory_says_so(tmp_path):
    err = error_of(tmp_path / "nope" / "train.jsonl", "text")
    assert "does not exist" in err.hint


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_split(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    err = error_of(path, "text")
    assert "no examples" in err.message and err.where == str(path)
    assert "remove this split" in err.hint


def test_bad_json_reports_line_and_column(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "ok"}, '{"text": "a",}'])
    err = error_of(path, "text")
    assert f"{path}:2: not valid JSON at column 14" in str(err)
    assert '{"text": "..."}' in err.hint


def test_non_object_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['["a", "b"]'])
    assert f"{path}:1: expected a JSON object, got a JSON array" in str(error_of(path, "text"))


def test_missing_key_names_key_and_expected_shape(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q"}])
    err = str(error_of(path, "prompt_completion"))
    assert f"{path}:2: missing key 'completion'" in err
    assert '{"prompt": "...", "completion": "..."}' in err


def test_wrong_type_names_key_and_type(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": 3}])
    assert f"{path}:1: key 'text' must be a string, got a JSON number" in str(error_of(path, "text"))


def test_line_in_another_format_suggests_the_format(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    assert "looks like format 'chat'" in str(error_of(path, "text"))


@pytest.mark.parametrize("messages, problem", [
    ("hi", "'messages' must be a list"),
    ([], "'messages' is empty"),
    (["hi"], "messages[0] must be an object"),
    ([{"role": "bot", "content": "x"}], 'messages[0].role must be one of system, user, assistant, got "bot"'),
    ([{"role": "user", "content": None}], "messages[0].content must be a string, got a JSON null"),
    ([{"role": "user", "content": "x"}], "no 'assistant' message"),
])
def test_chat_shape_problems(tmp_path, messages, problem):
    path = write_lines(tmp_path / "d.jsonl", [{"messages": messages}])
    assert f"{path}:1: {problem}" in str(error_of(path, "chat"))


def test_invalid_utf8_reports_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    err = str(error_of(path, "text"))
    assert f"{path}:2: not valid UTF-8 (byte 14 of the line is 0xe9)" in err and "re-save" in err


def test_all_problems_of_a_file_are_reported_together(tmp_path):
    lines = [{"text": "ok"}, "nope", {"txt": "x"}, {"text": 1}]
    path = write_lines(tmp_path / "d.jsonl", lines)
    err = str(error_of(path, "text"))
    assert "3 bad lines" in err
    for lineno in (2, 3, 4):
        assert f"{path}:{lineno}:" in err
    assert f"{path}:1:" not in err


def test_problem_listing_is_capped(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ["x"] * (MAX_REPORTED + 5))
    err = str(error_of(path, "text"))
    assert f"{MAX_REPORTED + 5} bad lines" in err
    assert err.count("not valid JSON") == MAX_REPORTED and "... and 5 more" in err


def test_unknown_format(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "a"}])
    err = error_of(path, "alpaca")
    assert "unknown data format 'alpaca'" in err.message and "prompt_completion" in err.hint


def test_verify_dataset_reports_counts_and_hashes(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", [{"text": "a"}, {"text": "b"}, ""])
    valid = write_lines(tmp_path / "valid.jsonl", [{"text": "c"}])
    report = verify_dataset({"train": train, "validation": valid, "test": None}, "text")
    assert [s.name for s in report.splits] == ["train", "validation"]
    assert report.split("train").n_examples == 2 and report.split("validation").n_examples == 1
    assert report.split("train").sha256 == hashlib.sha256(train.read_bytes()).hexdigest()
    assert report.to_dict()["splits"]["validation"]["path"] == str(valid)


def test_load_dataset_returns_examples(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", [{"text": "a"}])
    examples, report = load_dataset({"train": train}, "text")
    assert examples == {"train": [{"text": "a"}]} and report.format == "text"


def test_problems_in_several_splits_are_reported_together(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", ["oops"])
    err_text = ""
    with pytest.raises(UserError) as info:
        verify_dataset({"train": train, "validation": tmp_path / "missing.jsonl"}, "text")
    err_text = str(info.value)
    assert "2 dataset splits" in err_text
    assert f"{train}:1: not valid JSON" in err_text and "validation split file not found" in err_text
