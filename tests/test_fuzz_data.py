"""Fuzzing `tuneforge data prepare`: rows of every supported shape, some of them broken (a field of the
wrong type, missing, huge, odd Unicode, a row that is not an object), written as JSONL, JSON or CSV and
sometimes damaged at the byte level. Each file prepares (with every invalid row counted and written to
rejects.jsonl when data.skip_invalid is on) or stops with a clear error naming the file, exit 2; never
a traceback, and never a partial folder: no half-written output, no temporary folder left behind."""

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from conftest import fuzz, read_jsonl
from fuzzing import EDGE_TEXT, JSON_VALUES, ODD_TEXT
from tuneforge.cli.main import main

WORDS = st.lists(st.sampled_from(["What", "is", "the", "sum", "of", "2", "and", "3", "?", "Return", "a", "list",
                                   "café", "日本", "😀", "x" * 30]), min_size=1, max_size=12).map(" ".join)
TEXT = st.one_of(WORDS, WORDS, WORDS, ODD_TEXT, EDGE_TEXT)  # mostly text a row may hold, some of it odd
TURNS = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=2).map(
    lambda pairs: [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})])
ANY_ROLES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "robot"]),
                                            "content": TEXT}), min_size=1, max_size=4)
ROWS = {
    "messages": st.fixed_dictionaries({"messages": TURNS | ANY_ROLES}),
    "prompt_completion": st.fixed_dictionaries({"prompt": TEXT, "completion": TEXT}),
    "alpaca": st.fixed_dictionaries({"instruction": TEXT, "output": TEXT}, optional={"input": TEXT}),
    "sharegpt": st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries(
        {"from": st.sampled_from(["human", "gpt", "system", "alien"]), "value": TEXT}), min_size=1, max_size=4)}),
    "preference": st.fixed_dictionaries({"prompt": TEXT, "chosen": TEXT, "rejected": TEXT}),
    "text": st.fixed_dictionaries({"text": TEXT}),
}


@st.composite
def broken(draw, row):
    """A row with one field retyped, removed, made huge, or the row itself replaced."""
    row = dict(row)
    kind = draw(st.sampled_from(["retype", "remove", "huge", "extra", "replace", "id", "deep"]))
    key = draw(st.sampled_from(sorted(row)))
    if kind == "retype":
        row[key] = draw(JSON_VALUES)
    elif kind == "remove":
        row.pop(key)
    elif kind == "huge":
        row[key] = "x" * draw(st.sampled_from([20_000, 150_000]))
    elif kind == "extra":
        row[draw(TEXT)] = draw(JSON_VALUES)
    elif kind == "id":
        row["id"] = draw(JSON_VALUES)
    elif kind == "deep":  # a placeholder, written out as that many nested lists (deepen): hypothesis
        row[key] = f"<<deep:{draw(st.sampled_from([40, 2_000, 30_000]))}>>"  # cannot print such a value
    else:
        return draw(JSON_VALUES)
    return row


def rows():
    one = st.one_of(*ROWS.values())
    return st.lists(st.one_of(one, one, one, one.flatmap(broken)), min_size=0, max_size=30)


def deepen(data: bytes) -> bytes:
    """Each "<<deep:N>>" placeholder (quoted in JSON, bare in a CSV cell) becomes N nested lists."""
    return re.sub(rb'"?<<deep:(\d+)>>"?', lambda m: b"[" * int(m[1]) + b"0" + b"]" * int(m[1]), data)


def as_jsonl(rows: list) -> bytes:
    return deepen("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def as_json(rows: list) -> bytes:
    return deepen(json.dumps({"rows": rows}, ensure_ascii=False).encode())


def as_csv(rows: list) -> bytes:
    """prompt,completion columns from each row's first two values (CSV holds strings)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt", "completion"])
    for r in rows:
        values = list(r.values()) if isinstance(r, dict) else [r]
        writer.writerow([v if isinstance(v, str) else json.dumps(v) for v in values[:2]])
    return deepen(out.getvalue().encode())


@st.composite
def damaged(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["none", "none", "none", "cut", "flip", "nul", "bom", "crlf", "latin1"]))
    if kind == "cut" and data:
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "flip" and data:
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if kind == "nul":
        return data.replace(b",", b",\x00", 1)
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    if kind == "latin1":
        return data.replace(b"e", b"\xe9", 3)
    return data


FILES = st.sampled_from([("jsonl", as_jsonl), ("json", as_json), ("csv", as_csv)])


@fuzz(examples=60)
@given(content=rows(), kind=FILES, damage=st.data(), skip_invalid=st.sampled_from([True, True, True, False]))
def test_fuzzed_data_files_prepare_or_stop_cleanly(content, kind, damage, skip_invalid, tiny_model, tmp_path,
                                                   capsys):
    suffix, write = kind
    source = tmp_path / f"rows.{suffix}"
    source.write_bytes(damage.draw(damaged(write(content))))
    out = tmp_path / "prepared"
    if out.exists():  # from the previous example (hypothesis reuses the test's tmp_path)
        shutil.rmtree(out)
    args = ["data", "prepare", "--data", str(source), "--model", str(tiny_model), "--out", str(out),
            "--set", "data.max_length=64", "--set", f"data.skip_invalid={str(skip_invalid).lower()}"]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    cache = Path(os.environ["TUNEFORGE_HOME"]) / "prepared"
    leftovers = [p.name for folder in (tmp_path, cache) if folder.is_dir() for p in folder.iterdir()
                 if p.name.startswith(".")]
    assert not leftovers, leftovers
    if code == 2:
        event("refused")
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert source.name in err or "no training examples left" in err, err
        assert not out.exists()
        return
    event("prepared")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == counts["valid"] + counts["invalid"]
    rejects = read_jsonl(out / "rejects.jsonl") if (out / "rejects.jsonl").exists() else []
    assert len(rejects) == counts["invalid"] and (skip_invalid or not rejects)
    assert all(r["where"].startswith(f"{source}:") and r["reason"] for r in rejects)
    kept = sum(len(read_jsonl(out / f"{split}.jsonl")) for split in ("train", "val", "test"))
    assert kept == sum(counts["split"].values()) and kept >= 1
    assert {"report.md", "report.html"} <= set(os.listdir(out))
