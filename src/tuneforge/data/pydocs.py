"""The built-in `pydocs` data set: questions about the installed Python's standard library, answered
by the first paragraph of the matching docstring; and `pydocs-modules`, the same docstrings labelled
with their package (a classification set).

Real domain text nobody here wrote, available on every machine with Python. Pure-Python modules are
read with `ast` (nothing is imported, so no module runs its import-time side effects); modules
written in C are imported, which has no side effects for the ones kept here.
"""

import ast
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import sysconfig
from pathlib import Path

# Platform-specific, GUI, demo and test packages, and the "dead batteries" PEP 594 removed in 3.13:
# not documentation people ask about, and keeping them out keeps the set alike across Python versions.
_SKIP = {
    "aifc", "asynchat", "asyncore", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "imp", "mailcap",
    "nis", "nntplib", "ossaudiodev", "pipes", "smtpd", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib",
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
    "pydoc_data", "msilib", "winreg", "winsound", "nt", "ntpath", "nturl2path", "xxsubtype", "xxlimited",
    "xxlimited_35", "distutils", "sre_compile", "sre_constants", "sre_parse", "_pydecimal", "__phello__",
    "asyncio.windows_events", "asyncio.windows_utils", "encodings", "multiprocessing.popen_spawn_win32",
}
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$", re.DOTALL)
_MIN_CHARS, _MAX_CHARS = 30, 500

_QUESTIONS = {
    "module": ["What is the `{}` module for?", "What does the Python module `{}` provide?"],
    "class": ["What is `{}` in Python?", "What does the class `{}` represent?"],
    "function": ["What does `{}` do?", "Explain what the Python function `{}` does."],
    "method": ["What does the method `{}` do?", "What does `{}` do?"],
}


def build_pydocs() -> list[dict]:
    """All examples, sorted by id; the same Python installation always gives the same list."""
    docs: dict[str, tuple[str, str]] = {}  # qualified name -> (kind, docstring)
    for name, path in _module_files().items():
        docs.update(_source_docs(name, path) if path else _compiled_docs(name))
    examples, seen_answers = [], set()
    for qualname in sorted(docs):
        kind, doc = docs[qualname]
        answer = _first_paragraph(doc)
        if answer is None or answer in seen_answers:  # aliases (os.path.join == posixpath.join)
            continue
        seen_answers.add(answer)
        templates = _QUESTIONS[kind]
        pick = int(hashlib.sha256(qualname.encode()).hexdigest(), 16) % len(templates)
        examples.append({
            "id": f"pydocs:{qualname}",
            "messages": [
                {"role": "user", "content": templates[pick].format(qualname)},
                {"role": "assistant", "content": answer},
            ],
        })
    return examples


def build_pydocs_modules(classes: int = 8) -> list[dict]:
    """The same docstrings labelled with the package they document, for the classification demo: which of
    the `classes` packages with the most docstrings (asyncio, xml, logging, posix, email, ...) a text
    is from. Ties in size go by name, so the set is the same for the same Python."""
    from collections import Counter

    rows = [{"id": e["id"], "text": e["messages"][1]["content"], "label": e["id"].split(":")[1].split(".")[0]}
            for e in build_pydocs()]
    sizes = Counter(r["label"] for r in rows)
    kept = {name for name, _ in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:classes]}
    return [r for r in rows if r["label"] in kept]


def _module_files() -> dict[str, Path | None]:
    """Public stdlib modules and public submodules of stdlib packages -> their source file
    (None for modules compiled into the interpreter or shipped as extension modules)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files: dict[str, Path | None] = {}
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in _SKIP:
            continue
        spec = importlib.util.find_spec(top)  # top-level: locates without importing
        if spec is None or spec.origin is None:
            continue
        if spec.origin in ("built-in", "frozen") or spec.origin.endswith(".so"):
            files[top] = None
        elif not spec.submodule_search_locations:
            files[top] = Path(spec.origin)
        else:
            for path in sorted((stdlib / top).rglob("*.py")):
                parts = path.relative_to(stdlib).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                dotted = ".".join(parts)
                if not any(p.startswith("_") or p in ("test", "tests") for p in parts) and dotted not in _SKIP:
                    files[dotted] = path
    return files


def _source_docs(name: str, path: Path) -> dict[str, tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return {}
    public = _dunder_all(tree)
    docs = {}
    if doc := ast.get_docstring(tree):
        docs[name] = ("module", doc)
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name.startswith("_") or (public is not None and node.name not in public):
            continue
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        if doc := ast.get_docstring(node):
            docs[f"{name}.{node.name}"] = (kind, doc)
        if kind == "class":
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    if doc := ast.get_docstring(item):
                        docs[f"{name}.{node.name}.{item.name}"] = ("method", doc)
    return docs


def _dunder_all(tree: ast.Module) -> set[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            try:
                return set(ast.literal_eval(node.value))
            except ValueError:
                return None
    return None


def _compiled_docs(name: str) -> dict[str, tuple[str, str]]:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a module that cannot load here is simply not documented
        return {}
    docs = {}
    if module.__doc__:
        docs[name] = ("module", module.__doc__)
    for attr in sorted(vars(module)):
        obj = getattr(module, attr)
        if attr.startswith("_") or getattr(obj, "__module__", name) not in (name, "builtins", None):
            continue
        if inspect.isclass(obj) or inspect.isbuiltin(obj) or inspect.isroutine(obj):
            if obj.__doc__ and obj.__doc__ != type(obj).__doc__:
                docs[f"{name}.{attr}"] = ("class" if inspect.isclass(obj) else "function", obj.__doc__)
    return docs


def _first_paragraph(doc: str) -> str | None:
    """The first paragraph that is prose (not a call signature), on one line, or None if unusable."""
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        text = " ".join(paragraph.split())
        if not text or _SIGNATURE.match(text) or text.startswith(("--", ">>>")):
            continue
        if _MIN_CHARS <= len(text) <= _MAX_CHARS:
            return text
        return None
    return None
