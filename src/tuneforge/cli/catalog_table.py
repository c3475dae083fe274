"""`tuneforge models`: the catalogue as a table, with the memory each method needs."""

from tuneforge.models.catalog import CATALOG, CatalogEntry
from tuneforge.recipe import Recipe
from tuneforge.tasks import TASKS
from tuneforge.train.plan import ModelShape, estimate_memory

# The reference workload for the memory columns: fp32 AdamW, micro-batch 4 x 512 tokens.
_TOKENS = 4 * 512
_LORA_RANK = 16


def memory_gib(entry: CatalogEntry, method: str) -> float | None:
    """None for an image model: the plan's activation estimate counts tokens, not pixels."""
    if entry.kind == "image":
        return None
    if method == "lora":
        # all-linear LoRA adds r x (in + out) per projection: about 18 x hidden per rank and layer
        trainable = _LORA_RANK * entry.layers * 18 * entry.hidden
        total = entry.params + trainable
    else:
        trainable = total = entry.params
    # an encoder trains a small head, not an LM head over the vocabulary
    shape = ModelShape(total, trainable, [], 0, 0, entry.layers, entry.hidden, 0 if entry.encoder else entry.vocab)
    return estimate_memory(shape, Recipe(method=method), _TOKENS, "fp32").total / 2**30


def print_catalog() -> None:
    defaults = {task.default_model for task in TASKS.values() if CATALOG[task.default_model].bundled}
    header = ("name", "params", "arch", "tasks", "source", "licence", "LoRA GiB", "full GiB")
    rows = [(e.name + (" *" if e.name in defaults else ""), _millions(e.params), e.architecture,
             _tasks(e), e.source, e.licence, *(_gib(memory_gib(e, m)) for m in ("lora", "full")))
            for e in CATALOG.values()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    print("\n* a task's default, works offline. heads = classification, regression (a new head on the model).\n"
          "image_classification: a new head on an ImageNet backbone. seq2seq: an encoder-decoder writes the\n"
          "answer (its default, flan-t5-small, comes from the hub: no seq2seq model installs offline).\n"
          "Memory: fp32 AdamW, micro-batch 4 x 512 tokens (estimate).\n"
          "Hub models download on first use (network needed); model.name also takes a local folder.")


def _tasks(entry: CatalogEntry) -> str:
    tasks = [t for t in entry.tasks if t not in ("classification", "regression")]
    return ", ".join(tasks + (["heads"] if "classification" in entry.tasks else []))


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _millions(params: int) -> str:
    return f"{params / 1e6:,.1f}M" if params < 10e6 else f"{params / 1e6:,.0f}M"
