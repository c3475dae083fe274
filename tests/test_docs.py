"""The guides as a site: `mkdocs build --strict` passes (every page in the nav, every link and anchor
between pages valid), and every relative link of the README front page points at a file that exists."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_the_site_builds_strictly_with_every_page_in_the_nav(tmp_path):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(nav_pages(config["nav"])) == pages
    result = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "image-classification" / "index.html").is_file()


def test_the_readme_links_only_to_files_that_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert local and all((ROOT / link).exists() for link in local), [link for link in local if not (ROOT / link).exists()]


def test_the_readme_stays_a_front_page():
    """The guides hold the detail; the README keeps the two quick-start commands, the tasks and the commands."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 120
    assert "make demo\nmake test" in text and "## Tasks" in text and "## Commands" in text
