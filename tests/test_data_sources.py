"""Every supported source format gives the same prepared data for the same content."""

import json

import pytest

from conftest import read_jsonl

ROWS = [{"prompt": f"How do I fix problem {i}?", "completion": f"Restart service {i} and check log {i * 7}."}
        for i in range(60)]


def write_sources(folder):
    """The same 60 rows in every supported shape and container."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    folder.mkdir()
    jsonl = "".join(json.dumps(r) + "\n" for r in ROWS)
    (folder / "rows.jsonl").write_text(jsonl)
    (folder / "rows-utf16.jsonl").write_bytes(jsonl.encode("utf-16"))  # with a byte-order mark
    (folder / "rows.json").write_text(json.dumps(ROWS, indent=2))
    (folder / "rows-object.json").write_text(json.dumps({"version": 1, "data": ROWS}))
    (folder / "rows.csv").write_text("prompt,completion\n" + "".join(f'"{r["prompt"]}","{r["completion"]}"\n' for r in ROWS))
    (folder / "rows.tsv").write_text("prompt\tcompletion\n" + "".join(f'{r["prompt"]}\t{r["completion"]}\n' for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), folder / "rows.parquet")
    Dataset.from_list(ROWS).save_to_disk(str(folder / "saved"))
    (folder / "chat.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}) + "\n" for r in ROWS))
    (folder / "sharegpt.json").write_text(json.dumps([{"conversations": [
        {"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["completion"]}]} for r in ROWS]))
    (folder / "alpaca.jsonl").write_text("".join(json.dumps({"instruction": r["prompt"], "input": "",
                                                             "output": r["completion"]}) + "\n" for r in ROWS))
    (folder / "mapped.csv").write_text("q;a\n".replace(";", ",") + "".join(f'"{r["prompt"]}","{r["completion"]}"\n' for r in ROWS))
    return folder


NAMES = ["rows-utf16.jsonl", "rows.json", "rows-object.json", "rows.csv", "rows.tsv", "rows.parquet", "saved",
         "chat.jsonl", "sharegpt.json", "alpaca.jsonl", "mapped.csv"]


def test_identical_content_prepares_identically_from_every_format(tmp_path, prepare_into):
    folder = write_sources(tmp_path / "src")
    reference, manifest = prepare_into([str(folder / "rows.jsonl")])
    assert manifest["counts"]["valid"] == 60
    expected = {name: (reference / f"{name}.jsonl").read_bytes() for name in ("train", "val", "test")}
    for name in NAMES:
        spec = {"path": str(folder / name)}
        if name == "mapped.csv":
            spec["columns"] = {"prompt": "q", "completion": "a"}
        out, manifest = prepare_into([spec])
        assert manifest["counts"]["valid"] == 60, name
        for split, content in expected.items():
            assert (out / f"{split}.jsonl").read_bytes() == content, (name, split)


def test_text_files_per_file_line_and_block(tmp_path, prepare_into):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("First paragraph of a.\n\nSecond paragraph of a.\n")
    (docs / "b.md").write_text("Only paragraph of b.\n")
    (docs / "notes.bin").write_bytes(b"\0\1")  # not a text file: ignored
    counts = {}
    for unit in ("file", "block", "line"):
        out, manifest = prepare_into([{"path": str(docs), "text_unit": unit}], val_ratio=0, test_ratio=0)
        counts[unit] = manifest["counts"]["valid"]
        assert all("text" in row for row in read_jsonl(out / "train.jsonl"))
    assert counts == {"file": 2, "block": 3, "line": 3}


def test_several_sources_weights_and_given_splits(tmp_path, prepare_into):
    folder = write_sources(tmp_path / "src")
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Other question {i}?", "completion": f"Other answer {i}."}) + "\n"
                            for i in range(10)))
    out, manifest = prepare_into([{"path": str(folder / "rows.jsonl"), "weight": 2},
                                  {"path": str(held), "split": "test"}], val_ratio=0, test_ratio=0)
    c = manifest["counts"]
    assert c["split"] == {"train": 60, "val": 0, "test": 10}
    assert c["oversampled_added"] == 60 and c["final"]["train"] == 120
    assert {r["messages"][0]["content"] for r in read_jsonl(out / "test.jsonl")} == {f"Other question {i}?" for i in range(10)}


def test_hub_id_without_network_is_a_clear_error(prepare_into, monkeypatch):
    from tuneforge.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="could not load this hub data set.*save_to_disk"):
        prepare_into(["someone/some-dataset"])
