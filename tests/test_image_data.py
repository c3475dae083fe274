"""Image rows through `data prepare`: the sources (a class-per-subfolder folder, a CSV / JSONL with an image
column, a saved `datasets` folder with an Image column, idx files), the checks on each image (unreadable,
truncated, tiny, pixel modes), the images stored in the prepared folder, exact and near duplicates and the
leakage check between splits, and the report's image table and contact sheet."""

import gzip
import io
import json
import struct

import numpy as np
import pytest
from conftest import pattern_image, read_jsonl, write_image_folder
from PIL import Image

from tuneforge.cli.main import main
from tuneforge.errors import UserError
from tuneforge.recipe_file import validate_recipe


def image_recipe(model, *sources, **data) -> dict:
    return {"name": "images", "task": "image_classification", "model": {"name": str(model)},
            "data": {"sources": [str(s) if not isinstance(s, dict) else s for s in sources], "val_ratio": 0.2,
                     "test_ratio": 0.2, **data},
            "train": {"global_batch_size": 4}}


def prepare(tmp_path, model, *sources, **data) -> tuple[dict, dict]:
    from tuneforge.data.prepare import prepare_data
    from tuneforge.models.loader import load_inputs
    from tuneforge.tasks import get_task

    recipe = validate_recipe(image_recipe(model, *sources, **data))
    out = tmp_path / "prepared"
    manifest = prepare_data(recipe, load_inputs(model, get_task(recipe.task)), out)
    return manifest, {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "val", "test")}


def test_image_folder_is_prepared_with_its_images_stored_and_a_contact_sheet(tmp_path, tiny_image_model):
    folder = write_image_folder(tmp_path / "patterns", per_class=10)
    manifest, splits = prepare(tmp_path, tiny_image_model, folder)
    out = tmp_path / "prepared"
    assert manifest["sources"][0]["kind"] == "image_folder"
    assert manifest["counts"]["final"] == {"train": 18, "val": 6, "test": 6}
    assert manifest["labels"] == {kind: {"train": 6, "val": 2, "test": 2} for kind in ("checks", "columns", "stripes")}
    assert manifest["images"]["train"] == {"images": 18, "median_width": 40, "median_height": 40, "min_side": 40,
                                           "max_side": 40, "modes": {"RGB": 18}}
    # 40-pixel images, a 32-pixel model: its own size
    assert manifest["derived"]["data.image.size"]["value"] == 32
    rows = [r for split in splits.values() for r in split]
    assert len({r["image"] for r in rows}) == 30 and all((out / r["image"]).is_file() for r in rows)
    assert len(list((out / "images").iterdir())) == 30  # only the kept rows' images
    assert (out / "contact_sheet.png").stat().st_size > 10_000
    assert "contact_sheet.png" in (out / "report.md").read_text() and "## Images" in (out / "report.md").read_text()
    assert not (out / "token_lengths.png").exists()


def test_csv_jsonl_and_datasets_sources_with_an_image_column(tmp_path, tiny_image_model):
    import datasets

    folder = write_image_folder(tmp_path / "patterns", per_class=4)
    files = sorted(folder.rglob("*.png"))
    (tmp_path / "rows.csv").write_text("image,label\n" + "".join(f"patterns/{f.parent.name}/{f.name},{f.parent.name}\n"
                                                                 for f in files[:6]))
    # Hugging Face's imagefolder metadata names the path file_name; an absolute path works too
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"file_name": str(f), "label": f.parent.name}) + "\n"
                                                 for f in files[6:]))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    saved = datasets.Dataset.from_dict({"image": [pattern_image(k, 500 + i) for k in ("stripes", "checks") for i in range(3)],
                                        "label": ["stripes"] * 3 + ["checks"] * 3}, features=features)
    saved.save_to_disk(str(tmp_path / "saved"))
    manifest, _ = prepare(tmp_path, tiny_image_model, tmp_path / "rows.csv", tmp_path / "rows.jsonl",
                          tmp_path / "saved")
    assert [s["formats"] for s in manifest["sources"]] == [{"image": 6}, {"image": 6}, {"image": 6}]
    assert manifest["counts"]["final"]["train"] + manifest["counts"]["final"]["val"] + \
        manifest["counts"]["final"]["test"] == 18


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_become_grayscale_image_rows(tmp_path, tiny_image_model):
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (24, 20, 20)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(24) % 3)
    manifest, splits = prepare(tmp_path, tiny_image_model, folder)
    assert manifest["sources"][0]["kind"] == "idx"
    assert manifest["images"]["train"]["modes"] == {"L": manifest["counts"]["final"]["train"]}
    assert {r["label"] for r in splits["train"]} == {0, 1, 2}
    # 20-pixel images, twice that is more than the model's 32: its own size
    assert manifest["derived"]["data.image.size"]["value"] == 32


def test_truncated_idx_file_is_refused(tmp_path, tiny_image_model):
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((4, 20, 20)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(4))
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "rb") as f:
        data = f.read()
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(data[:-50])
    with pytest.raises(UserError, match="a truncated file"):
        prepare(tmp_path, tiny_image_model, folder)


def _jpeg(image, quality=90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.mark.parametrize("name, content, error", [
    ("not-an-image.png", b"this is text, not a picture", "is not an image Pillow can read"),
    ("truncated.png", None, "damaged or truncated image"),
    ("tiny.png", "tiny", "smaller than data.image.min_side (16)"),
    ("depth.tiff", "float", "pixel mode 'F', which has no RGB meaning"),
])
def test_bad_images_are_refused_with_their_file(tmp_path, tiny_image_model, name, content, error):
    folder = write_image_folder(tmp_path / "patterns", per_class=4)
    path = folder / "stripes" / name
    if content is None:
        buffer = io.BytesIO()
        pattern_image("stripes", 77, size=64).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue()[:-200])
    elif content == "tiny":
        pattern_image("stripes", 78, size=8).save(path)
    elif content == "float":
        Image.fromarray(np.random.default_rng(0).random((30, 30)).astype(np.float32), mode="F").save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as raised:
        prepare(tmp_path, tiny_image_model, folder)
    message = str(raised.value)
    assert message.startswith(f"{path}:") and error in message, message
    assert not (tmp_path / "prepared").exists()  # nothing half-written


def test_bad_images_are_skipped_and_counted_when_asked(tmp_path, tiny_image_model):
    folder = write_image_folder(tmp_path / "patterns", per_class=5)
    (folder / "stripes" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (folder / "notes.txt").write_text("how these were made")
    manifest, _ = prepare(tmp_path, tiny_image_model, folder, skip_invalid=True)
    assert manifest["counts"]["invalid"] == 2
    rejects = read_jsonl(tmp_path / "prepared" / "rejects.jsonl")
    assert {r["field"] for r in rejects} == {"image"}
    assert any("is not an image file (.txt)" in r["reason"] for r in rejects)


def test_modes_are_converted_to_rgb_or_refused(tmp_path, tiny_image_model):
    folder = write_image_folder(tmp_path / "patterns", per_class=5)
    pattern_image("stripes", 90).convert("CMYK").save(folder / "stripes" / "cmyk.jpg")
    rgba = pattern_image("checks", 91).convert("RGBA")
    rgba.putalpha(0)  # fully transparent: white once composited
    rgba.save(folder / "checks" / "clear.png")
    pattern_image("columns", 92).convert("P").save(folder / "columns" / "palette.gif")
    manifest, splits = prepare(tmp_path, tiny_image_model, folder)
    modes = {m for split in manifest["images"].values() for m in split["modes"]}
    assert {"CMYK", "RGBA", "P"} <= modes
    from tuneforge.tasks.image_inputs import load_rgb

    clear = next(r for s in splits.values() for r in s if r["image"].endswith(".png")
                 and Image.open(tmp_path / "prepared" / r["image"]).mode == "RGBA")
    assert np.asarray(load_rgb(tmp_path / "prepared" / clear["image"])).min() == 255
    with pytest.raises(UserError, match="data.image.convert_modes is false"):
        prepare(tmp_path / "strict", tiny_image_model, folder, image={"convert_modes": False})


def test_the_same_picture_re_encoded_is_a_duplicate_and_never_leaks_into_test(tmp_path, tiny_image_model):
    folder = write_image_folder(tmp_path / "patterns", per_class=12)
    for i in range(6):  # a JPEG copy of six training candidates, and a lossless copy in another format
        original = Image.open(folder / "stripes" / f"{i:03d}.png")
        (folder / "stripes" / f"copy-{i}.jpg").write_bytes(_jpeg(original))
    Image.open(folder / "checks" / "000.png").save(folder / "checks" / "same.bmp")
    manifest, splits = prepare(tmp_path, tiny_image_model, folder)
    c = manifest["counts"]
    assert c["read"] == 36 + 7
    assert c["exact_duplicates"] == 1  # the BMP: the same pixels
    assert c["near_duplicates"] == 6  # the JPEGs, removed before the split, so none is left to leak
    assert sum(v["near"] + v["exact"] for v in c["leakage_removed"].values()) == 0
    held = {r["id"] for name in ("val", "test") for r in splits[name]}
    assert not held & {r["id"] for r in splits["train"]}


def test_distinct_images_are_not_called_duplicates(tmp_path, tiny_image_model):
    folder = write_image_folder(tmp_path / "patterns", per_class=30)
    manifest, _ = prepare(tmp_path, tiny_image_model, folder)
    assert manifest["counts"]["near_duplicates"] == 0 and manifest["counts"]["exact_duplicates"] == 0


def test_leakage_check_removes_a_near_copy_from_the_held_out_splits(tmp_path, tiny_image_model):
    folder = write_image_folder(tmp_path / "patterns", per_class=10)
    copies = tmp_path / "copies" / "stripes"
    copies.mkdir(parents=True)
    for i in range(10):
        (copies / f"{i:03d}.jpg").write_bytes(_jpeg(Image.open(folder / "stripes" / f"{i:03d}.png")))
    manifest, splits = prepare(tmp_path, tiny_image_model, folder, {"path": str(tmp_path / "copies"), "split": "test"},
                               clean={"dedup_near": False})
    # the copies of the 6 training originals leave test; the copies of val / test originals stay
    assert manifest["counts"]["leakage_removed"]["test"] == {"exact": 0, "near": 6}
    assert sum(r["image"].endswith(".jpg") for r in splits["test"]) == 4


def test_cli_prepare_of_a_missing_image_path_exits_2(tmp_path, tiny_image_model, capsys):
    (tmp_path / "rows.csv").write_text("image,label\nnowhere.png,a\n")
    recipe = tmp_path / "recipe.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(image_recipe(tiny_image_model, tmp_path / "rows.csv")))
    assert main(["data", "prepare", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'rows.csv'}:2" in err and "nowhere.png" in err and "no such file" in err
    assert not (tmp_path / "out").exists()
