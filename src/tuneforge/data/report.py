"""The data report: what was read, what each stage removed or changed, and token (or image) statistics, as
markdown (report.md) and a self-contained HTML page (report.html, plots embedded)."""

import base64
import html
from pathlib import Path

import numpy as np

from tuneforge.data.image_stats import contact_sheet
from tuneforge.data.split import SPLITS
from tuneforge.data.stats import plot_labels, plot_lengths, plot_stages


def stages(manifest: dict) -> list[tuple[str, int]]:
    """(stage, rows left after it), in pipeline order."""
    c = manifest["counts"]
    left = c["read"]
    out = [("read", left)]
    for label, removed in (("valid", c["invalid"]), ("length filter", c["too_short"] + c["too_long"]),
                           ("exact dedup", c["exact_duplicates"]), ("near dedup", c["near_duplicates"]),
                           ("leakage check", sum(sum(v.values()) for v in c["leakage_removed"].values())),
                           ("subset", c["subset_removed"])):
        left -= removed
        out.append((label, left))
    out.append(("+ oversampling, synthetic", left + c["oversampled_added"] + c["synthetic_added"]))
    return out


def write_report(manifest: dict, lengths: dict[str, np.ndarray], folder: Path) -> None:
    images = {"stages.png": plot_stages(stages(manifest), folder / "stages.png")}
    if "tokens" in manifest:
        images["token_lengths.png"] = plot_lengths(lengths, manifest["tokens"]["max_length"],
                                                   folder / "token_lengths.png")
    else:
        images["contact_sheet.png"] = contact_sheet(folder, folder / "contact_sheet.png")
    if manifest.get("labels"):
        images["labels.png"] = plot_labels(manifest["labels"], folder / "labels.png")
    sections = _sections(manifest)
    (folder / "report.md").write_text(_markdown(sections, images=list(images)), encoding="utf-8")
    (folder / "report.html").write_text(_html(sections, images), encoding="utf-8")


def _sections(m: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, header, rows) tables shared by both renderings."""
    c = m["counts"]
    sources = [[s.get("path") or s.get("id") or s["kind"], s["kind"], ", ".join(f"{k} {v:,}" for k, v in s["formats"].items()),
                f"{s['rows']:,}", f"{s['invalid']:,}", s["weight"], s["split"] or "by ratio",
                (s.get("sha256") or "")[:12]] for s in m["sources"]]
    stage_rows = []
    previous = None
    for name, left in stages(m):
        stage_rows.append([name, f"{left:,}", "" if previous is None else f"{left - previous:+,}"])
        previous = left
    leak = c["leakage_removed"]
    details = [["rows changed by cleaning", f"{c['cleaned']:,}"],
               ["too short / too long (tokens)", f"{c['too_short']:,} / {c['too_long']:,}"],
               ["exact / near duplicates", f"{c['exact_duplicates']:,} / {c['near_duplicates']:,}"],
               ["leaked into val (exact / near)", f"{leak['val']['exact']:,} / {leak['val']['near']:,}"],
               ["leaked into test (exact / near)", f"{leak['test']['exact']:,} / {leak['test']['near']:,}"],
               ["oversampled rows added", f"{c['oversampled_added']:,}"],
               ["synthetic rows added", f"{c['synthetic_added']:,}"]]
    details += [[f"PII replaced: {kind}", f"{n:,}"] for kind, n in m["pii_replaced"].items()]
    out = [
        ("Sources", ["source", "kind", "formats", "rows", "invalid", "weight", "split", "sha256"], sources),
        ("Rows after each stage", ["stage", "rows", "change"], stage_rows),
        ("What changed", ["what", "rows"], details),
        _tokens(m["tokens"]) if "tokens" in m else _images(m["images"]),
    ]
    if m.get("labels"):
        out.append(("Labels (rows per split)", ["label", *SPLITS],
                    [[name, *(f"{n[split]:,}" for split in SPLITS)] for name, n in m["labels"].items()]))
    if m["invalid_reasons"]:
        out.append(("Invalid rows (see rejects.jsonl)", ["reason", "rows"],
                    [[r, f"{n:,}"] for r, n in m["invalid_reasons"].items()]))
    if m["near_duplicate_examples"]:
        out.append(("Near duplicates (examples)", ["kept", "removed"],
                    [[p["kept"], p["removed"]] for p in m["near_duplicate_examples"]]))
    return out


def _tokens(t: dict) -> tuple:
    rows = [[name, f"{t[name]['rows']:,}", f"{t[name]['tokens']:,}", t[name]["mean"], t[name]["median"],
             t[name]["p95"], t[name]["max"], f"{t[name]['truncated_at_max_length']:,}"] for name in SPLITS]
    return (f"Tokens (max_length {t['max_length']}, {t['steps_per_epoch']:,} steps per epoch)",
            ["split", "rows", "tokens", "mean", "median", "p95", "max", f"over {t['max_length']} (truncated)"], rows)


def _images(i: dict) -> tuple:
    rows = [[name, f"{i[name]['images']:,}", f"{i[name]['median_width']} x {i[name]['median_height']}",
             i[name]["min_side"], i[name]["max_side"], ", ".join(f"{m} {n:,}" for m, n in i[name]["modes"].items())]
            for name in SPLITS]
    return ("Images", ["split", "images", "median size", "smallest side", "largest side", "pixel modes"], rows)


def summary(manifest: dict) -> str:
    """The stage and token tables (and invalid-row reasons), for the terminal."""
    keep = ("Rows after each stage", "Tokens", "Images", "Labels", "Invalid rows")
    return _markdown([s for s in _sections(manifest) if s[0].startswith(keep)], images=[]).strip()


def labels_table(manifest: dict) -> str:
    """The rows per label and split (none for rows that are not stratified by label)."""
    return _markdown([s for s in _sections(manifest) if s[0].startswith("Labels")], images=[]).strip()


_CAPTIONS = {"stages.png": "rows after each stage", "token_lengths.png": "example lengths",
             "labels.png": "rows per label and split", "contact_sheet.png": "training images per label"}


def _markdown(sections, images: list[str]) -> str:
    lines = ["# Data report", ""] if images else []
    for title, header, rows in sections:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
        lines.append("")
    for name in images:
        lines += [f"![{_CAPTIONS[name]}]({name})", ""]
    return "\n".join(lines)


def _html(sections, images: dict[str, bytes]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>tuneforge data report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}",
             ("table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;"
              "text-align:left;font-size:14px}th{background:#f3f3f3}img{max-width:100%}</style></head><body>"),
             "<h1>Data report</h1>"]
    for title, header, rows in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for name, png in images.items():
        parts.append(f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
