"""The import layering (pyproject.toml, [tool.importlinter]): no pipeline stage imports a later one, and
the shared modules import no stage. Checked with import-linter on the source, and on a copy with one
backward import added, which it must refuse."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=src.parent,
                          capture_output=True, text=True, env={"PYTHONPATH": str(src), "PATH": ""}, timeout=300)


def test_the_stages_are_layered():
    out = lint_imports(ROOT / "src")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


def test_a_backward_import_breaks_the_contract(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "tuneforge", src / "tuneforge", ignore=shutil.ignore_patterns("__pycache__"))
    loader = src / "tuneforge" / "models" / "loader.py"
    loader.write_text(loader.read_text() + "\nfrom tuneforge.train import plan  # noqa: E402\n")
    out = lint_imports(src)
    assert out.returncode == 1
    assert "A stage imports only the stages before it BROKEN" in out.stdout
    assert "tuneforge.models.loader -> tuneforge.train.plan" in out.stdout
