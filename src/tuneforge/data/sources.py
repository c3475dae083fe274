"""Read rows from any supported source, streaming: a file is never loaded whole.

Each reader yields `(where, row)` where `where` is "file:line" (or "file:row N" for tables) and `row`
is a dict, or a RowError for a row that cannot be read (bad encoding, not an object, ragged CSV
line, far too long). Problems with the file as a whole (missing, binary, truncated JSON) are
UserErrors: no row of such a file can be trusted.
"""

import codecs
import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from tuneforge.data.image_sources import (
    FASHION_CLASSES,
    builtin_folder,
    idx_folder,
    image_folder,
    is_idx_folder,
    is_image_folder,
)
from tuneforge.errors import RowError, UserError
from tuneforge.json_text import MAX_NESTING, loads
from tuneforge.recipe import SourceSpec

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".md": "text", ".text": "text", ".rst": "text"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]

Rows = Iterator[tuple[str, dict | RowError]]


BUILTIN = ("pydocs", "pydocs-modules", "fashion-mnist")


def source_kind(spec: SourceSpec) -> str:
    """pydocs, pydocs-modules, fashion-mnist, jsonl, json, csv, tsv, parquet, text, text_folder,
    image_folder, idx, datasets or hub; UserError otherwise."""
    if spec.path in BUILTIN:
        return spec.path
    path = Path(spec.path).expanduser()
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "datasets"
        if is_idx_folder(path):
            return "idx"
        return "image_folder" if is_image_folder(path, SUFFIXES) else "text_folder"
    if path.is_file():
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise UserError(f"{path}: unknown file type {path.suffix!r}. Supported: "
                            f"{', '.join(sorted(SUFFIXES))}, a folder of text files or a saved `datasets` folder. "
                            "Rename the file to the suffix that matches its content.")
        return kind
    if _HUB_ID.match(spec.path) and not spec.path.startswith((".", "~")):
        return "hub"
    raise UserError(f"{spec.path}: no such file or folder (and not a hub data set id like owner/name). "
                    "Check data.sources.")


def read_source(spec: SourceSpec, max_row_chars: int) -> Rows:
    kind = source_kind(spec)
    path = Path(spec.path).expanduser()
    if kind in ("pydocs", "pydocs-modules"):
        from tuneforge.data.pydocs import build_pydocs, build_pydocs_modules

        rows = build_pydocs() if kind == "pydocs" else build_pydocs_modules()
        return ((f"{kind}:{e['id']}", e) for e in rows)
    if kind == "fashion-mnist":
        return idx_folder(builtin_folder(kind), FASHION_CLASSES)
    if kind == "idx":
        return idx_folder(path)
    if kind == "image_folder":
        return image_folder(path, _hidden)
    if kind == "jsonl":
        return _jsonl(path, spec.encoding, max_row_chars)
    if kind == "json":
        return _json(path, spec.json_field, spec.encoding)
    if kind in ("csv", "tsv"):
        return _csv(path, "\t" if kind == "tsv" else ",", spec.encoding, max_row_chars)
    if kind == "parquet":
        return _parquet(path)
    if kind in ("text", "text_folder"):
        unit = spec.text_unit if spec.text_unit != "auto" else ("file" if kind == "text_folder" else "block")
        return _text(path, unit, spec.encoding, max_row_chars)
    if kind == "datasets":
        return _datasets_folder(path, spec.hf_split)
    return _hub(spec)


def fingerprint(spec: SourceSpec) -> dict:
    """What identifies the source's content (sha256 of its bytes; of every file, for folders), and a
    row count estimate for progress bars (lines, or the table's row count)."""
    kind = source_kind(spec)
    if kind in ("pydocs", "pydocs-modules"):
        return {"kind": kind, "python": sys.version.split()[0]}
    if kind == "hub":
        return {"kind": kind, "id": spec.path, "config": spec.hf_config, "split": spec.hf_split or "train"}
    path = builtin_folder(kind) if kind == "fashion-mnist" else Path(spec.path).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)) if path.is_dir() else [path]
    digest, lines = hashlib.sha256(), 0
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                lines += chunk.count(b"\n")
    info = {"kind": kind, "path": str(path.resolve()), "files": len(files), "sha256": digest.hexdigest()}
    if kind in ("jsonl", "csv", "tsv") or (kind == "text" and spec.text_unit == "line"):
        info["rows_estimate"] = lines
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            info["rows_estimate"] = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, OSError):
            pass  # the reader says what is wrong with the file
    return info


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _sniff(path: Path, encoding: str | None) -> str:
    """The encoding to read with: the one asked for, the byte-order mark's, or UTF-8.
    Refuses binary files (NUL bytes without a UTF-16/32 mark) with a clear error."""
    with path.open("rb") as f:
        head = f.read(8192)
    if encoding:
        return encoding
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    if b"\0" in head:
        raise UserError(f"{path}: looks like a binary file (it contains NUL bytes), not text. "
                        "Point data.sources at the JSONL / CSV / Parquet / text file itself.")
    return "utf-8"


def _lines(path: Path, encoding: str | None, max_row_chars: int) -> Iterator[tuple[int, str | RowError]]:
    """Numbered lines of a text file. UTF-8 lines are decoded one by one, so one bad line is one
    bad row; other encodings are decoded as a stream."""
    encoding = _sniff(path, encoding)
    limit = 4 * max_row_chars  # bytes: no line this long can hold a valid row
    if encoding in ("utf-8", "utf-8-sig"):
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                if len(raw) > limit:
                    yield number, RowError(f"line is {len(raw):,} bytes, more than data.max_row_chars allows "
                                           f"({max_row_chars:,} characters); is the file broken?")
                    continue
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield number, RowError(f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}). "
                                           "Re-save the file as UTF-8, or set `encoding:` on this source "
                                           "(for instance latin-1).")
        return
    try:
        with path.open("r", encoding=encoding, newline="") as f:
            for number, line in enumerate(f, start=1):
                if len(line) > max_row_chars * 2:
                    yield number, RowError(f"line is {len(line):,} characters, more than data.max_row_chars.")
                    continue
                yield number, line
    except (UnicodeDecodeError, LookupError) as e:
        raise UserError(f"{path}: cannot be read as {encoding} ({e}). Set `encoding:` on this source to the "
                        "file's real encoding.") from None


def _jsonl(path: Path, encoding: str | None, max_row_chars: int) -> Rows:
    for number, line in _lines(path, encoding, max_row_chars):
        where = f"{path}:{number}"
        if isinstance(line, RowError):
            yield where, line
            continue
        if not line.strip():
            continue
        try:
            row = loads(line)
        except json.JSONDecodeError as e:
            yield where, RowError(f"not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object.")
            continue
        if not isinstance(row, dict):
            yield where, RowError(f"is a JSON {type(row).__name__}, expected an object like "
                                  '{"prompt": ..., "completion": ...}.')
            continue
        yield where, row


def _json(path: Path, field: str | None, encoding: str | None) -> Rows:
    """A JSON array of rows, or an object holding one (`json_field`, else the first list), streamed
    with ijson so a file larger than memory still works."""
    import ijson

    encoding = _sniff(path, encoding)
    prefix = "item" if field is None and _first_char(path, encoding) == "[" else None
    if prefix is None:
        prefix = f"{field}.item" if field else _first_list_key(path, encoding)
    try:
        _check_nesting(path, encoding)
        with _binary_utf8(path, encoding) as f:
            for number, row in enumerate(ijson.items(f, prefix, use_float=True), start=1):
                where = f"{path}:item {number}"
                yield where, row if isinstance(row, dict) else RowError(
                    f"is a JSON {type(row).__name__}, expected an object with the row's fields.")
    except ijson.JSONError as e:
        raise _not_json(path, encoding, e) from None


def _check_nesting(path: Path, encoding: str) -> None:
    """Refuse a JSON file nested deeper than any rows file is, before ijson builds its rows: ijson's C
    builder slows down with depth without bound (a 400 KB file nested 200,000 deep ran for minutes
    and grew until killed). One pass over the parse events costs ~1 s per 20 MB."""
    import ijson

    depth, limit = 0, MAX_NESTING + 2  # the rows' own levels, inside the array and an object holding it
    with _binary_utf8(path, encoding) as f:
        for event, _ in ijson.basic_parse(f):
            if event in ("start_array", "start_map"):
                depth += 1
                if depth > limit:
                    raise UserError(f"{path}: arrays and objects nest more than {limit} levels deep; rows in a "
                                    "JSON file are an array of objects a few levels deep. Is it the right file?")
            elif event in ("end_array", "end_map"):
                depth -= 1


def _first_char(path: Path, encoding: str) -> str:
    with path.open("r", encoding=encoding, errors="replace") as f:
        while char := f.read(1):
            if not char.isspace():
                return char
    raise UserError(f"{path}: the file is empty. Add rows (a JSON array of objects).")


def _first_list_key(path: Path, encoding: str) -> str:
    import ijson

    with _binary_utf8(path, encoding) as f:
        try:
            for prefix, event, _ in ijson.parse(f):
                if event == "start_array" and prefix and "." not in prefix:
                    return f"{prefix}.item"
        except ijson.JSONError as e:
            raise _not_json(path, encoding, e) from None
    raise UserError(f"{path}: a JSON object without a list of rows. Use an array of objects, or an object "
                    "like {\"data\": [...]} (set `json_field:` on the source to choose the key).")


def _not_json(path: Path, encoding: str, error: Exception) -> UserError:
    """Where and why a JSON file does not parse: bytes that are not UTF-8, or the first syntax error
    with its line and column (re-parsed for that when the file is small enough)."""
    raw = path.read_bytes() if path.stat().st_size <= 256 << 20 else b""
    if raw and encoding in ("utf-8", "utf-8-sig"):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            column = e.start - raw.rfind(b"\n", 0, e.start)
            return UserError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {column}). Re-save the "
                             "file as UTF-8, or set `encoding:` on this source (for instance latin-1).")
    where = ""
    try:
        if raw:
            loads(raw.decode(encoding, errors="replace"))
    except json.JSONDecodeError as e:
        where = f" at line {e.lineno} column {e.colno}"
    detail = error.args[0] if error.args else error
    detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    return UserError(f"{path}: not valid JSON{where}: {detail.strip().splitlines()[0]}. Fix the file (is it "
                     "truncated?).")


class _binary_utf8:
    """A binary UTF-8 stream for ijson, re-encoding files in another encoding on the fly."""

    def __init__(self, path: Path, encoding: str):
        self.path, self.encoding = path, encoding

    def __enter__(self):
        if self.encoding in ("utf-8", "utf-8-sig"):
            self.f = self.path.open("rb")
            if self.f.read(3) != codecs.BOM_UTF8:
                self.f.seek(0)
        else:
            self.f = codecs.EncodedFile(self.path.open("rb"), "utf-8", self.encoding)
        return self.f

    def __exit__(self, *exc):
        self.f.close()


def _csv(path: Path, delimiter: str, encoding: str | None, max_row_chars: int) -> Rows:
    encoding = _sniff(path, encoding)
    csv.field_size_limit(max(4 * max_row_chars, 1 << 17))
    # surrogateescape keeps undecodable bytes visible per field, so one bad row is one rejected row.
    with path.open("r", encoding="utf-8" if encoding == "utf-8-sig" else encoding, errors="surrogateescape",
                   newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = None
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                yield f"{path}:{reader.line_num}", RowError(f"not valid CSV ({e}).")
                continue
            if not record or record == [""]:
                continue
            if header is None:
                if any(_undecodable(name) for name in record):
                    raise UserError(f"{path}:{reader.line_num}: the header row is not {encoding} text. Re-save the "
                                    "file as UTF-8, or set `encoding:` on this source (for instance latin-1).")
                header = [name.lstrip("\ufeff").strip() for name in record]
                if len(set(header)) != len(header) or not all(header):
                    raise UserError(f"{path}:{reader.line_num}: the header row {header} has empty or repeated "
                                    "column names. The first line must name each column once.")
                continue
            where = f"{path}:{reader.line_num}"
            if len(record) != len(header):
                yield where, RowError(f"has {len(record)} fields but the header has {len(header)} "
                                      f"({', '.join(header)}); quote fields that contain the delimiter.")
                continue
            if any(_undecodable(value) for value in record):
                yield where, RowError(f"not {encoding} text. Re-save the file as UTF-8, or set `encoding:` on "
                                      "this source (for instance latin-1).")
                continue
            yield where, dict(zip(header, record))
    if header is None:
        raise UserError(f"{path}: the file is empty. The first line must name the columns, one row per line after it.")


def _undecodable(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _parquet(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e}).") from None
    number = 0
    for batch in table.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield f"{path}:row {number}", row


def _text(path: Path, unit: str, encoding: str | None, max_row_chars: int) -> Rows:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)
                   and SUFFIXES.get(p.suffix.lower()) == "text") if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path}: no text files (.txt, .md, .rst, .text) in this folder.")
    for file in files:
        if unit == "file":
            lines = list(_lines(file, encoding, max_row_chars))
            bad = next((line for _, line in lines if isinstance(line, RowError)), None)
            yield f"{file}:1", bad or {"text": "".join(lines_text for _, lines_text in lines)}
            continue
        block, start = [], 1
        for number, line in _lines(file, encoding, max_row_chars):
            if isinstance(line, RowError):
                yield f"{file}:{number}", line
                continue
            if unit == "line":
                if line.strip():
                    yield f"{file}:{number}", {"text": line.rstrip("\r\n")}
                continue
            if line.strip():
                start = number if not block else start
                block.append(line)
            elif block:
                yield f"{file}:{start}", {"text": "".join(block)}
                block = []
        if block:
            yield f"{file}:{start}", {"text": "".join(block)}


def _datasets_folder(path: Path, split: str | None) -> Rows:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for damaged folders
        raise UserError(f"{path}: not a readable `datasets` folder ({e}).") from None
    name = None
    if isinstance(data, DatasetDict):
        name = split or "train"
        if name not in data:
            raise UserError(f"{path}: has splits {', '.join(data)}, not {name!r}. Set `hf_split:` on the source.")
        data = data[name]
    label = f"{path}[{name}]" if name else str(path)
    for number, row in enumerate(data, start=1):
        yield f"{label}:row {number}", row


def _hub(spec: SourceSpec) -> Rows:
    from datasets import load_dataset

    split = spec.hf_split or "train"
    try:
        data = load_dataset(spec.path, spec.hf_config, split=split, streaming=True)
        rows = iter(data)
        first = next(rows, None)
    except Exception as e:  # offline, unknown id, gated: all end the same way for the user
        raise UserError(f"{spec.path}: could not load this hub data set ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}). Without network, download it "
                        "elsewhere, `save_to_disk` it, and point data.sources at that folder.") from None
    if first is not None:
        yield f"hub:{spec.path}[{split}]:row 1", first
    for number, row in enumerate(rows, start=2):
        yield f"hub:{spec.path}[{split}]:row {number}", row
