"""Text cleaning, each step switchable in data.clean: control/zero-width characters and whitespace,
HTML, Unicode NFC, PII. Every step is idempotent and applies to each text of an example in place of
that text; the example's turns (and roles) never change."""

import html
import re
import unicodedata
from collections import Counter

from tuneforge.data.pii import PiiScrubber
from tuneforge.recipe import CleanSection

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_TRAILING = re.compile(r"[ \t\u00a0]+(?=\n|\Z)")
_BLANK_LINES = re.compile(r"\n{3,}")
_BLOCK_TAG = re.compile(r"<(?:br|/?p|/?div|/?li|/?tr|/?h[1-6]|/?ul|/?ol|/?table|/?pre)\b[^<>]*>", re.IGNORECASE)
_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[A-Za-z/!][^<>]*>", re.DOTALL | re.IGNORECASE)


_NEEDS_WHITESPACE_CLEANING = re.compile(r"[\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]"
                                        r"|[ \t\u00a0]\n|\n\n\n|^\s|\s\Z")


def clean_whitespace(text: str) -> str:
    if not _NEEDS_WHITESPACE_CLEANING.search(text):  # the common case, one scan
        return text
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _BLANK_LINES.sub("\n\n", _TRAILING.sub("", text)).strip()


def strip_html(text: str) -> str:
    """Tags out (block tags become line breaks), entities decoded, until nothing changes: decoding
    `&lt;b&gt;` makes a tag, which the next round removes."""
    for _ in range(10):
        before = text
        text = _CONTROL.sub("", html.unescape(_TAG.sub("", _BLOCK_TAG.sub("\n", text))))
        if text == before:
            break
    return text


class Cleaner:
    def __init__(self, config: CleanSection):
        self.config = config
        self.scrubber = PiiScrubber(config.pii_patterns) if config.pii else None
        self.pii_counts: Counter = Counter()

    def text(self, text: str) -> str:
        c = self.config
        if c.whitespace:
            text = clean_whitespace(text)
        if c.strip_html and ("<" in text or "&" in text):
            text = strip_html(text)
            if c.whitespace:
                text = clean_whitespace(text)
        if c.unicode_nfc and not text.isascii():
            text = unicodedata.normalize("NFC", text)
        if self.scrubber:
            text = self.scrubber.scrub(text, self.pii_counts)
        return text

    def example(self, example: dict) -> bool:
        """Clean every text of the example in place; True if anything changed."""
        slots = [(example, "text")] if "text" in example else [(m, "content") for m in example["messages"]]
        slots += [(example, key) for key in ("rejected", "text_pair") if key in example]
        changed = False
        for holder, key in slots:
            new = self.text(holder[key])
            changed |= new != holder[key]
            holder[key] = new
        return changed
