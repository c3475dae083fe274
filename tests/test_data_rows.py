import pytest

from conftest import arithmetic_rows, write_jsonl
from tuneforge.data.rows import read_jsonl
from tuneforge.errors import UserError


def test_formats_are_normalised(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}]},
        {"prompt": "2+2?", "completion": "4"},
        {"text": "Plain text for continued pre-training.", "id": "doc-1"},
    ])
    rows = read_jsonl(path)
    assert rows[0]["messages"][0]["role"] == "system"
    assert rows[1]["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert rows[2] == {"id": "doc-1", "text": "Plain text for continued pre-training."}


def test_ids_are_content_hashes(tmp_path):
    rows = read_jsonl(write_jsonl(tmp_path / "d.jsonl", arithmetic_rows(3) + arithmetic_rows(1)))
    assert rows[0]["id"] == rows[3]["id"]  # identical rows share an id (and so a split)
    assert len({r["id"] for r in rows[:3]}) == 3


@pytest.mark.parametrize("line, expected", [
    ('{"messages": [', "d.jsonl:2: not valid JSON"),
    ('{"question": "q", "answer": "a"}', "d.jsonl:2: no usable field; found keys ['answer', 'question']"),
    ('[1, 2]', "d.jsonl:2: expected a JSON object"),
    ('{"prompt": "p", "completion": ""}', "d.jsonl:2: field `completion` must be a non-empty string"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "d.jsonl:2: `messages` has no assistant turn"),
    ('{"messages": [{"role": "bot", "content": "q"}]}', "d.jsonl:2: messages[0].role must be one of"),
    ('{"messages": [{"role": "user", "content": 3}]}', "d.jsonl:2: messages[0].content must be a non-empty string"),
    ('{"text": null}', "d.jsonl:2: field `text` must be a non-empty string"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [arithmetic_rows(1)[0], line])
    with pytest.raises(UserError) as e:
        read_jsonl(path)
    assert expected in str(e.value)


def test_empty_file_and_missing_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="no examples"):
        read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(UserError, match="data file not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match="d.jsonl:2: not UTF-8"):
        read_jsonl(path)
