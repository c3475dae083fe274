"""JSONL written with ensure_ascii=False keeps U+0085, U+2028 and U+2029 raw inside strings; every reader
of the project's JSONL files must still see one row per line (str.splitlines() would cut them)."""

import json

from tuneforge.evaluate.pairs import read_samples
from tuneforge.json_text import read_jsonl
from tuneforge.run_folder import read_metrics

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


def test_nesting_is_measured_without_recursion_and_strings_do_not_count():
    from tuneforge.json_text import nested_deeper_than, text_nesting

    deep = 1
    for _ in range(100_000):
        deep = [deep]
    assert nested_deeper_than(deep, 32) and not nested_deeper_than({"a": [[{"b": 1}]]}, 4)
    assert nested_deeper_than({"a": [[{"b": [1]}]]}, 4)
    assert text_nesting(b'{"a": [[{"b": 1}]]}') == 4
    assert text_nesting(json.dumps({"text": '[[[{{{ " ]]] \\'}).encode()) == 1  # a quote and a backslash inside
    assert text_nesting(b"[" * 100_000) == 100_000


def test_deeply_nested_input_is_refused_where_it_comes_in(tmp_path, prepare_into):
    """A recipe, a JSONL row and a JSON file nested thousands of levels deep: clear errors (or a counted
    reject), not a RecursionError from the parser or from a repr far downstream."""
    import pytest

    from tuneforge.errors import UserError
    from tuneforge.recipe_file import load_recipe

    recipe = tmp_path / "deep.yaml"
    recipe.write_text("train: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(UserError, match="deep.yaml: nests lists and mappings thousands of levels deep"):
        load_recipe(recipe)
    good = [{"prompt": f"What is {i}?", "completion": f"{i}."} for i in range(20)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"prompt": ' + "[" * 30_000 + "]" * 30_000 + "}\n"
                    + '{"prompt": ' + "[" * 50 + "]" * 50 + ', "completion": "x"}\n')
    with pytest.raises(UserError, match=r"rows.jsonl:21: not valid JSON \(arrays and objects nested too deeply"):
        prepare_into([str(rows)])
    _, manifest = prepare_into([str(rows)], skip_invalid=True)
    assert manifest["counts"]["invalid"] == 2 and manifest["counts"]["valid"] == 20
    assert "nests lists and objects more than 32 levels deep" in str(manifest["invalid_reasons"])
    array = tmp_path / "deep.json"
    array.write_text('[{"text": ' + "[" * 200_000 + "]" * 200_000 + "}]")
    with pytest.raises(UserError, match="deep.json: arrays and objects nest more than 34 levels deep"):
        prepare_into([str(array)])
