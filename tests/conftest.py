"""Shared fixtures: a tiny random Llama with a real BPE tokenizer and ChatML template, built in-process
(no downloads), and small chat data sets written as JSONL."""

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_CORPUS = [
    "What is the sum of two numbers? The answer is a number.",
    "Return the square root of x. Return the number of items in a container.",
    "system user assistant You are a helpful assistant.",
] * 20


def build_tiny_model(folder: Path, layers: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tuneforge.models.chat_template import DEFAULT_CHAT_TEMPLATE

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_encoder(folder: Path, layers: int = 2) -> Path:
    """A tiny random BERT (BertModel, no head: as a pre-trained encoder is shipped) with a WordPiece
    tokenizer trained on the labelled rows' words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
    wordpiece.train_from_iterator([r["text"] for r in labelled_rows(200)] + _CORPUS, trainer)
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _pair_corpus() -> list[str]:
    return [m["content"] for r in arithmetic_rows(200) for m in r["messages"]] + _CORPUS


def build_tiny_t5(folder: Path) -> Path:
    """A tiny random T5 (relative attention, the pad token as decoder start) with a Unigram tokenizer in
    T5's layout (<pad> 0, </s> 1, <unk> 2; </s> appended to every text), trained on arithmetic rows."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(_pair_corpus(), trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_bart(folder: Path) -> Path:
    """A tiny random BART (learned absolute positions, </s> as decoder start) with a byte-level BPE
    tokenizer in BART's layout (<s> ... </s> around every text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(_pair_corpus(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = BartTokenizer(vocab=trained["vocab"], merges=merges)
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        decoder_start_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> Path:
    return build_tiny_bart(tmp_path_factory.mktemp("tiny-bart"))


_MOODS = {"good": ["great", "lovely", "fine", "happy"], "bad": ["awful", "broken", "sad", "poor"],
          "meh": ["average", "plain", "usual", "okay"]}


def labelled_rows(n: int) -> list[dict]:
    """Short reviews whose label is the mood of their adjective: learnable by a tiny encoder."""
    rows = []
    for i in range(n):
        label = list(_MOODS)[i % 3]
        word = _MOODS[label][(i // 3) % 4]
        rows.append({"text": f"item {i} was {word} and {word} today", "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session", autouse=True)
def tuneforge_home(tmp_path_factory) -> Path:
    """Tests keep prepared data out of the user's cache; the converted bundled model (~20 s to convert)
    and llama.cpp's converter (a 77 MB download) are shared: they never change."""
    from tuneforge.home import tuneforge_home as real_home

    home = tmp_path_factory.mktemp("tuneforge-home")
    for shared in ("models", "llama.cpp"):  # the converted bundled model; llama.cpp's GGUF converter (fetched once)
        (real_home() / shared).mkdir(parents=True, exist_ok=True)
        (home / shared).symlink_to(real_home() / shared)
    os.environ["TUNEFORGE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), layers=3)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from tuneforge.models.loader import load_tokenizer

    return load_tokenizer(tiny_model)


def arithmetic_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i % 7}?"},
                          {"role": "assistant", "content": f"The answer is {i + i % 7}."}]} for i in range(n)]


def tiny_run_recipe(tiny_model: Path, data: Path, name: str) -> dict:
    """A 3-step LoRA recipe on the tiny model at a high learning rate, so the weights move visibly."""
    return {"name": name, "model": {"name": str(tiny_model)},
            "data": {"sources": [str(data)], "val_ratio": 0.1, "test_ratio": 0.1, "max_length": 64},
            "train": {"global_batch_size": 8, "max_steps": 3, "eval_every": 3, "learning_rate": 0.05}}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", arithmetic_rows(120))


@pytest.fixture
def tiny_recipe(tiny_model, chat_file):
    """A recipe that trains the tiny model on arithmetic chat rows in a few seconds."""
    from tuneforge.recipe_file import validate_recipe

    def make(**sections):
        raw = {"name": "tiny", "seed": 0, "model": {"name": str(tiny_model)},
               "data": {"sources": [str(chat_file)], "val_ratio": 0.1, "test_ratio": 0.1, "max_length": 64},
               "train": {"global_batch_size": 8, "max_steps": 6, "eval_every": 3, "save_every": 3,
                         "log_every": 1, "eval_examples": 8, "precision": "fp32"},
               "eval": {"max_samples": 4, "max_new_tokens": 8, "batch_size": 4}}
        for key, value in sections.items():
            if isinstance(value, dict):
                raw.setdefault(key, {}).update(value)
            else:
                raw[key] = value
        return validate_recipe(raw)

    return make


@pytest.fixture
def prepare_into(tmp_path, tiny_tokenizer):
    """prepare_into(sources, **data_keys) -> (folder, manifest): run the data pipeline with the tiny
    tokenizer into a new folder under tmp_path."""
    from tuneforge.data.prepare import prepare_data
    from tuneforge.recipe_file import validate_recipe

    counter = iter(range(1000))

    def run(sources, seed: int = 0, train: dict | None = None, **data):
        recipe = validate_recipe({"seed": seed, "data": {"sources": sources, **data}, "train": train or {}})
        folder = tmp_path / f"prepared-{next(counter)}"
        return folder, prepare_data(recipe, tiny_tokenizer, folder)

    return run


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and "
                                    "chromium-driver (.ci/run installs them)")


def headless_chromium(profile: Path):
    """Debian's headless Chromium through its chromedriver (explicit paths: no Selenium Manager download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


# ---- fuzz tests (hypothesis): bounded, seeded, the seed printed --------------------------------------
FUZZ_SEED = int(os.environ.get("TUNEFORGE_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))


FUZZ_SCALE = float(os.environ.get("TUNEFORGE_FUZZ_SCALE", "1"))


def fuzz(examples: int):
    """A property test over `examples` generated cases (times TUNEFORGE_FUZZ_SCALE, for a longer hunt),
    seeded with FUZZ_SEED: a new seed each session explores new cases; TUNEFORGE_FUZZ_SEED=N (printed in
    the header and with a failure) repeats one."""
    from hypothesis import HealthCheck, seed, settings

    def decorate(test):
        test = settings(max_examples=max(1, round(examples * FUZZ_SCALE)), deadline=None, database=None, print_blob=True,
                        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                               HealthCheck.data_too_large, HealthCheck.filter_too_much])(test)
        return pytest.mark.fuzz(seed(FUZZ_SEED)(test))
    return decorate


def pytest_report_header(config):
    return f"fuzz seed: {FUZZ_SEED} (TUNEFORGE_FUZZ_SEED={FUZZ_SEED} repeats this session's fuzz cases)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed and item.get_closest_marker("fuzz"):
        report.sections.append(("fuzz seed", f"rerun this test's cases with TUNEFORGE_FUZZ_SEED={FUZZ_SEED}"))


def build_tiny_image_model(folder: Path) -> Path:
    """A random EfficientNet-Lite with two small stages (~5 k parameters) and a 32-pixel image processor,
    saved as a model folder, as the bundled one is."""
    import torch
    from transformers import ViTImageProcessor

    from tuneforge.models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteForImageClassification

    torch.manual_seed(0)
    config = EfficientNetLiteConfig(stages=[(1, 3, 1, 1, 8, 8), (2, 5, 2, 4, 8, 12)], stem_channels=8,
                                    head_channels=16, num_labels=5, batch_norm_momentum=0.1)
    EfficientNetLiteForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_image_model(tmp_path_factory) -> Path:
    return build_tiny_image_model(tmp_path_factory.mktemp("tiny-efficientnet"))


PATTERNS = ("stripes", "columns", "checks")


def pattern_image(kind: str, seed: int, size: int = 40):
    """A noisy, randomly coloured picture of horizontal stripes, vertical stripes or a checkerboard: three
    classes a tiny convolutional model tells apart, each image its own (no two are near duplicates)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    period, phase = int(rng.integers(4, 9)), int(rng.integers(0, 8))
    on = {"stripes": (y + phase) // period % 2, "columns": (x + phase) // period % 2,
          "checks": ((x + phase) // period + (y + phase) // period) % 2}[kind].astype(bool)
    colours = rng.integers(0, 256, (2, 3))
    pixels = np.where(on[..., None], colours[0], colours[1]) + rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_image_folder(root: Path, per_class: int, start: int = 0, suffix: str = ".png") -> Path:
    """One subfolder per pattern, `per_class` images in each (the ImageFolder convention)."""
    for c, kind in enumerate(PATTERNS):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            pattern_image(kind, 1000 * c + i).save(root / kind / f"{i:03d}{suffix}")
    return root


def post_json(url: str, body: dict) -> tuple[int, dict]:
    """POST a JSON body to a test server: (status, the JSON answer), errors included."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
