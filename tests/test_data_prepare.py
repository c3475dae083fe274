"""The whole preparation: stage counts that add up, leakage, filters, cache, report, augmentation,
preview and the `data prepare` command."""

import json
import subprocess
import sys

from conftest import arithmetic_rows, read_jsonl, write_jsonl


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def messy_rows() -> list:
    base = [chat(f"My printer number {i} shows error code {i * 3} after the update, what now?",
                 f"Unplug printer {i}, wait ten seconds, plug it back in and print a test page for {i}.") for i in range(80)]
    rows = base + [base[5], base[6]]                                   # exact duplicates
    rows.append(chat(base[7]["messages"][0]["content"].upper(), base[7]["messages"][1]["content"] + " "))  # exact (normalised)
    near = json.loads(json.dumps(base[8]))
    near["messages"][1]["content"] = near["messages"][1]["content"].replace(".", "!")
    rows.append(near)                                                  # near duplicate
    rows += ["[1]", chat("Hi", "   ")]                                 # invalid
    rows.append(chat("Contact me at jane@example.com or 192.168.1.7 please", "Noted, jane@example.com."))
    rows.append(chat("Short?", "Yes."))                                # below min_tokens
    return rows


def test_stage_counts_add_up(tmp_path, prepare_into):
    path = write_jsonl(tmp_path / "messy.jsonl", messy_rows())
    out, m = prepare_into([str(path)], skip_invalid=True, val_ratio=0.1, test_ratio=0.1,
                          clean={"pii": True, "min_tokens": 40})
    c = m["counts"]
    assert c["read"] == 88 and c["invalid"] == 2 and c["too_short"] == 1
    assert c["exact_duplicates"] == 3 and c["near_duplicates"] == 1
    assert m["pii_replaced"] == {"EMAIL": 2, "IP_ADDRESS": 1}
    leaked = sum(sum(v.values()) for v in c["leakage_removed"].values())
    removed = c["invalid"] + c["too_short"] + c["too_long"] + c["exact_duplicates"] + c["near_duplicates"] + leaked
    assert c["read"] - removed - c["subset_removed"] == sum(c["split"].values())
    assert c["final"] == c["split"]
    for name in ("train", "val", "test"):
        rows = read_jsonl(out / f"{name}.jsonl")
        assert [r["id"] for r in rows] == m["ids"][name] and len(rows) == c["final"][name]
        assert m["tokens"][name]["rows"] == len(rows)
    assert m["sources"][0]["sha256"] and m["files"]["train.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rejects.jsonl", "report.html", "report.md",
                                                    "stages.png", "test.jsonl", "token_lengths.png", "train.jsonl",
                                                    "val.jsonl"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "src='http" not in html
    assert "| exact dedup |" in (out / "report.md").read_text()


def test_leakage_check_removes_held_out_copies_of_training_rows(tmp_path, prepare_into):
    train = write_jsonl(tmp_path / "train.jsonl", [chat(f"Question number {i} about the billing portal and invoices?",
                                                        f"Answer number {i}: open the billing portal, then invoices.")
                                                   for i in range(40)])
    test_rows = [chat(f"Question number {i} about the billing portal and invoices?",
                      f"Answer number {i}: open the billing portal, then invoices.") for i in range(3)]
    test_rows.append(chat("Question number 5 about the billing portal and invoices??",
                          "Answer number 5: open the billing portal, then the invoices."))
    test_rows += [chat(f"A new unrelated question {i} on data export formats?", f"Use CSV export {i}.") for i in range(6)]
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    _, m = prepare_into([str(train), {"path": str(test), "split": "test"}], val_ratio=0, test_ratio=0,
                        clean={"dedup_exact": False, "dedup_near": False})
    assert m["counts"]["leakage_removed"]["test"] == {"exact": 3, "near": 1}
    assert m["counts"]["final"]["test"] == 6


def test_subset_length_filter_and_cache(tmp_path, tiny_tokenizer, monkeypatch):
    from tuneforge.data.prepare import prepared_folder
    from tuneforge.recipe_file import validate_recipe

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    path = write_jsonl(tmp_path / "rows.jsonl", arithmetic_rows(100))
    recipe = validate_recipe({"data": {"sources": [str(path)], "max_train_examples": 30, "clean": {"max_tokens": 200}}})
    first = prepared_folder(recipe, tiny_tokenizer)
    m = json.loads((first / "manifest.json").read_text())
    assert m["counts"]["final"]["train"] == 30 and m["counts"]["subset_removed"] > 0
    mtime = (first / "train.jsonl").stat().st_mtime_ns
    assert prepared_folder(recipe, tiny_tokenizer) == first and (first / "train.jsonl").stat().st_mtime_ns == mtime
    write_jsonl(path, arithmetic_rows(101))  # new content -> new preparation
    assert prepared_folder(recipe, tiny_tokenizer) != first


def test_augmentation_adds_marked_training_rows_only(tmp_path, prepare_into, tiny_model):
    path = write_jsonl(tmp_path / "rows.jsonl", arithmetic_rows(40))
    out, m = prepare_into([str(path)], augment={"synthetic": 4, "paraphrases": 4, "model": str(tiny_model),
                                                "max_new_tokens": 12})
    synthetic = [r for r in read_jsonl(out / "train.jsonl") if r.get("synthetic")]
    assert len(synthetic) == m["counts"]["synthetic_added"] == len(m["synthetic_ids"])
    assert {r["id"] for r in synthetic} == set(m["synthetic_ids"])
    assert {r["synthetic"] for r in synthetic} <= {"self-instruct", "paraphrase"}
    for name in ("val", "test"):
        assert not any(r.get("synthetic") for r in read_jsonl(out / f"{name}.jsonl"))


def test_preview_marks_loss_tokens(tmp_path, tiny_model, monkeypatch):
    from tuneforge.data.preview import preview
    from tuneforge.recipe_file import validate_recipe

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    path = write_jsonl(tmp_path / "rows.jsonl", arithmetic_rows(30))
    recipe = validate_recipe({"model": {"name": str(tiny_model)}, "data": {"sources": [str(path)]}})
    text = preview(recipe, 2, color=False)
    blocks = text.split("--- ")[1:]
    assert len(blocks) == 2
    for block in blocks:
        assert "<|im_start|>user\nWhat is" in block and "[[The answer is" in block and block.count("[[") == 1


def test_data_prepare_command(tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "rows.jsonl", arithmetic_rows(50))
    out = tmp_path / "prepared"
    env_home = {"TUNEFORGE_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "tuneforge", "data", "prepare", "--data", str(path), "--model", str(tiny_model),
           "--out", str(out)]
    import os

    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env_home})
    assert result.returncode == 0, result.stderr
    assert "| read | 50 |" in result.stdout and "steps per epoch" in result.stdout
    assert (out / "manifest.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env_home})
    assert again.returncode == 2 and "exists. Pass --overwrite" in again.stderr
    again = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, env={**os.environ, **env_home})
    assert again.returncode == 0 and "prepared before, reusing" in again.stdout
