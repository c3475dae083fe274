"""The corpus of malformed files in tests/data/bad: each gives a clear error naming file and line (or
a counted reject with skip_invalid), never a traceback, and no output folder is left behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_jsonl
from tuneforge.errors import UserError

BAD = Path(__file__).parent / "data" / "bad"

CASES = [  # file, message (as a regular expression)
    ("truncated.json", r"truncated\.json: not valid JSON at line 2 column \d+.*is it truncated"),
    ("array-line.jsonl", r"array-line\.jsonl:2: is a JSON list, expected an object"),
    ("latin1.jsonl", r"latin1\.jsonl:1: not UTF-8 \(byte 0xe9 at column \d+\).*encoding:"),
    ("empty.jsonl", r"empty\.jsonl: no rows \(the file or folder is empty\)"),
    ("garbage.jsonl", r"garbage\.jsonl: looks like a binary file"),
    ("ragged.csv", r"ragged\.csv:3: has 3 fields but the header has 2"),
    ("wrong-schema.parquet", r"wrong-schema\.parquet:row 1: no known format; found columns \['priority', 'ticket'\]"),
    ("sharegpt-unknown-role.jsonl", r"sharegpt-unknown-role\.jsonl:1: `conversations\[1\]\.from` is 'robot'.*roles: \{robot: assistant\}"),
]


@pytest.mark.parametrize("name, message", CASES)
def test_bad_files_give_clear_errors_and_leave_nothing(tmp_path, prepare_into, name, message):
    with pytest.raises(UserError, match=message):
        prepare_into([str(BAD / name)])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("prepared", ".prepared"))]


def test_latin1_reads_with_its_encoding_set(prepare_into):
    out, _ = prepare_into([{"path": str(BAD / "latin1.jsonl"), "encoding": "latin-1"}], val_ratio=0, test_ratio=0)
    assert read_jsonl(out / "train.jsonl")[0]["messages"][0]["content"] == "Café opening hours?"


def test_a_50_mb_line_is_rejected_without_parsing_it(tmp_path, prepare_into):
    path = tmp_path / "big.jsonl"
    good = json.dumps({"prompt": "Hi there?", "completion": "Hello."}) + "\n"
    path.write_text(good + '{"prompt": "' + "x" * (50 << 20) + '", "completion": "y"}\n' + good.replace("Hi", "Hey"))
    with pytest.raises(UserError, match=r"big\.jsonl:2: line is 52,428,\d+ bytes, more than data.max_row_chars"):
        prepare_into([str(path)])
    out, manifest = prepare_into([str(path)], skip_invalid=True, val_ratio=0, test_ratio=0)
    assert manifest["counts"]["invalid"] == 1 and manifest["counts"]["valid"] == 2


def test_skip_invalid_counts_rows_and_writes_rejects(tmp_path, prepare_into):
    path = tmp_path / "mixed.jsonl"
    rows = [json.dumps({"prompt": f"Question {i}?", "completion": f"Answer {i}."}) for i in range(20)]
    rows[3] = "[1, 2]"
    rows[7] = '{"prompt": "Unanswered?", "completion": ""}'
    rows[11] = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Anyone?"}]}'
    rows[15] = '{"prompt": "Broken'
    path.write_text("\n".join(rows) + "\n")
    out, manifest = prepare_into([str(path)], skip_invalid=True)
    assert manifest["counts"]["invalid"] == 4 and manifest["counts"]["valid"] == 16
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [r["where"] for r in rejects] == [f"{path}:{n}" for n in (4, 8, 12, 16)]
    assert rejects[1]["field"] == "completion" and "is empty" in rejects[1]["reason"]
    assert "messages[1].role" in rejects[2]["field"]


def test_cli_bad_data_exits_2_without_traceback(tmp_path, tiny_model):
    out = tmp_path / "out"
    for name in ("truncated.json", "garbage.jsonl", "ragged.csv"):
        result = subprocess.run([sys.executable, "-m", "tuneforge", "data", "prepare", "--data", str(BAD / name),
                                 "--model", str(tiny_model), "--out", str(out)], capture_output=True, text=True,
                                cwd=tmp_path, env={**os.environ, "TUNEFORGE_HOME": str(tmp_path / "home")})
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and f"error: {BAD / name}" in result.stderr
        assert not out.exists() and not list((tmp_path / "home" / "prepared").iterdir())
