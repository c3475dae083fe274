"""JSONL written with ensure_ascii=False keeps U+0085, U+2028 and U+2029 raw inside strings; every reader
of the project's JSONL files must still see one row per line (str.splitlines() would cut them)."""

import json

from tuneforge.evaluate.pairs import read_samples
from tuneforge.jsonl import read_jsonl
from tuneforge.runs.folder import read_metrics

ROWS = [{"answer": "one\u2028two"}, {"answer": "next\x85line\u2029", "n": 1}, {"answer": "\x1c\x1d\x1e"}]


def test_rows_holding_unicode_line_separators_read_back_whole(tmp_path):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    assert len(text.splitlines()) > len(ROWS)  # what the readers must not do
    (tmp_path / "eval").mkdir()
    for path in (tmp_path / "rows.jsonl", tmp_path / "eval" / "samples.jsonl", tmp_path / "metrics.jsonl"):
        path.write_text(text, encoding="utf-8")
    assert read_jsonl(tmp_path / "rows.jsonl") == ROWS
    assert read_samples(tmp_path) == ROWS
    assert read_metrics(tmp_path) == ROWS
