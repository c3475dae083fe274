"""Fuzzing recipes: random YAML documents through `load_recipe`, and key / value mutations of every
shipped recipe through `tuneforge train` up to the point where the run would load weights and write its
folder. Each is a valid recipe or a clear error (exit 2, `error: ` and where), never a traceback, and a
refused recipe leaves nothing under runs/."""

from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from conftest import arithmetic_rows, fuzz, write_jsonl
from fuzzing import EDGE_TEXT, JSON_VALUES, ODD_TEXT, field_paths, valid
from tuneforge.cli.main import main
from tuneforge.errors import UserError
from tuneforge.recipe import Recipe
from tuneforge.recipe_file import load_recipe
from tuneforge.train import run as run_module

SHIPPED = sorted((Path(__file__).parents[1] / "recipes").rglob("*.yaml"))
PATHS = field_paths(Recipe)
KEYS = [p for p, _, _ in PATHS]
# Keys that would make the planned run do real work before the stop point (generate synthetic rows
# with the model) are mutated in the load_recipe test only.
CHEAP = [p for p in PATHS if not p[0].startswith("data.augment")]

YAML_SCALARS = st.sampled_from(["", "~", "null", "yes", "no", "on", "0x1F", "1e3", ".inf", "-.nan", "0o17",
                                "2026-12-01", "12:30:00", "'quoted'", '"\\u00e9"', "!!binary aGk=", "&a 1",
                                "*a", "[", "{", "- x", "? x", ": x", "|", ">", "%YAML 1.1", "---", "...",
                                "!!python/object:os.system ls", "\t", "\x00", "\ufeff"])


def yaml_documents():
    """Text that is a recipe-like mapping, a random structure, or broken YAML."""
    keyed = st.recursive(JSON_VALUES, lambda inner: st.dictionaries(
        st.sampled_from(sorted({k.split(".")[-1] for k in KEYS})) | ODD_TEXT, inner, max_size=5), max_leaves=15)
    structured = (keyed | JSON_VALUES).map(lambda v: yaml.safe_dump(v, allow_unicode=True))
    lines = st.lists(st.tuples(st.sampled_from(["", "  ", "    "]), st.sampled_from(sorted(KEYS)) | ODD_TEXT,
                               YAML_SCALARS | EDGE_TEXT | ODD_TEXT), max_size=8).map(
        lambda ls: "".join(f"{indent}{key.split('.')[-1]}: {value}\n" for indent, key, value in ls))
    deep = st.tuples(st.integers(50, 20_000), st.sampled_from(["[", "{a: "])).map(
        lambda d: "train: " + d[1] * d[0] + ("]" if d[1] == "[" else "}") * d[0] + "\n")
    return structured | lines | deep | st.text(max_size=200) | YAML_SCALARS | st.sampled_from([p.read_text() for p in SHIPPED])


@fuzz(examples=400)
@given(text=yaml_documents())
def test_random_yaml_documents_load_or_give_a_user_error(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        recipe = load_recipe(path)
    except UserError as e:
        event("refused")
        assert str(path) in str(e) and str(e).strip(), str(e)
        return
    event("loaded")
    assert load_recipe(_write(tmp_path / "again.yaml", recipe.to_yaml())) == recipe  # resolved round-trips


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class Planned(Exception):
    """Raised where `tuneforge train` would load the weights: the recipe was accepted end to end."""


@pytest.fixture
def stop_before_loading(monkeypatch):
    def planned(setup, *a, **kw):
        raise Planned(setup.recipe)

    monkeypatch.setattr(run_module, "load_trainee", planned)


@st.composite
def mutations(draw):
    """(key path, new value or DELETE, as YAML or as --set) for one recipe key, or an unknown key."""
    path, annotation, metadata = draw(st.sampled_from(CHEAP))
    kind = draw(st.sampled_from(["valid", "valid", "any", "delete", "unknown", "set"]))
    if kind == "valid":
        return path, draw(valid(annotation, metadata, {"data.sources.0.path": ODD_TEXT}, path)), "yaml"
    if kind == "any":
        return path, draw(JSON_VALUES), "yaml"
    if kind == "delete":
        return path, DELETE, "yaml"
    if kind == "unknown":
        return path.rsplit(".", 1)[0] + "." + draw(st.sampled_from(["lerning_rate", "r", "epoch", "x"])) \
            if "." in path else draw(ODD_TEXT | st.just("methd")), draw(JSON_VALUES), "yaml"
    return path, draw(YAML_SCALARS | EDGE_TEXT | ODD_TEXT | st.integers().map(str)), "set"


DELETE = object()


def _apply(raw: dict, path: str, value) -> dict:
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        if part.isdigit() and isinstance(node, list):
            node = node[int(part)] if int(part) < len(node) else {}
            continue
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, (dict, list)):
            child = {}
            if isinstance(node, dict):
                node[part] = child
        node = child
    if isinstance(node, dict):
        if value is DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return raw


@fuzz(examples=40)
@given(shipped=st.sampled_from(SHIPPED), change=mutations())
def test_mutated_shipped_recipes_plan_or_stop_with_a_clear_error(shipped, change, tiny_model, tmp_path,
                                                                 stop_before_loading, capsys):
    """Each shipped recipe on the tiny model and a small data file (so that planning takes a second),
    with one key changed."""
    data = write_jsonl(tmp_path / "chat.jsonl", arithmetic_rows(60))
    raw = yaml.safe_load(shipped.read_text())
    raw["model"] = {**raw.get("model", {}), "name": str(tiny_model)}
    raw["data"] = {**raw.get("data", {}), "sources": [str(data)], "max_length": 64}
    raw.get("train", {}).pop("compile", None)
    path, value, how = change
    args = []
    if how == "set":
        args = ["--set", f"{path}={value}"]
    else:
        raw = _apply(raw, path, value)
    if isinstance(raw.get("data"), dict) and isinstance(raw["data"].get("augment"), dict):
        raw["data"].pop("augment")  # a whole new data section may ask for synthetic rows (CHEAP says why not)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw, allow_unicode=True))
    runs = tmp_path / "runs"
    capsys.readouterr()
    try:
        code = main(["train", str(recipe_file), "--runs-dir", str(runs), *args])
    except Planned:
        event("planned")
    else:
        event("refused")
        err = capsys.readouterr().err  # progress bars may come first
        message = err[err.find("error: "):]
        assert code == 2 and "error: " in err and len(message.strip().splitlines()) <= 12, err
        assert "Traceback" not in err
    assert not runs.exists()
