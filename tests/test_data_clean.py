"""Cleaners: idempotent, never drop or reorder turns, PII scrubbing touches only what it matches."""

import string
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.data.clean import Cleaner, clean_whitespace, strip_html
from tuneforge.data.pii import PiiScrubber
from tuneforge.recipe import CleanSection

ALL_ON = CleanSection(strip_html=True, pii=True, pii_patterns={"EMPLOYEE_ID": r"EMP-\d{6}"})
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200)
# Text with no digits, '@' or ':' cannot hold PII, so anything that changes in it is a bug.
plain = st.text(alphabet=string.ascii_letters + " .,!?'()-\n", max_size=80)
pii_items = st.sampled_from(["jane.doe@example.com", "192.168.0.12", "2001:db8::ff00:42:8329", "4111 1111 1111 1111",
                             "+44 20 7946 0958", "(555) 010-4477", "EMP-123456"])
PLACEHOLDER = {"jane.doe@example.com": "[EMAIL]", "192.168.0.12": "[IP_ADDRESS]", "2001:db8::ff00:42:8329": "[IP_ADDRESS]",
               "4111 1111 1111 1111": "[CARD_NUMBER]", "+44 20 7946 0958": "[PHONE]", "(555) 010-4477": "[PHONE]",
               "EMP-123456": "[EMPLOYEE_ID]"}


@settings(max_examples=300, deadline=None)
@given(texts)
def test_cleaning_is_idempotent(text):
    cleaner = Cleaner(ALL_ON)
    once = cleaner.text(text)
    assert cleaner.text(once) == once


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), texts), min_size=1, max_size=6))
def test_cleaning_keeps_every_turn_and_role(turns):
    example = {"id": "x", "messages": [{"role": "system", "content": "s"}]
               + [{"role": r, "content": c} for r, c in turns] + [{"role": "assistant", "content": "answer"}]}
    roles = [m["role"] for m in example["messages"]]
    Cleaner(ALL_ON).example(example)
    assert [m["role"] for m in example["messages"]] == roles
    assert example["messages"][-1]["content"] == "answer"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(plain, pii_items), max_size=5), plain)
def test_pii_scrub_changes_only_the_matches(pieces, tail):
    # Separate each item from the text around it, as real text does.
    text = "".join(f"{before} {item} " for before, item in pieces) + tail
    expected = "".join(f"{before} {PLACEHOLDER[item]} " for before, item in pieces) + tail
    counts = Counter()
    assert PiiScrubber({"EMPLOYEE_ID": r"EMP-\d{6}"}).scrub(text, counts) == expected
    assert sum(counts.values()) == len(pieces)


def test_pii_leaves_look_alikes_alone():
    scrubber, counts = PiiScrubber({}), Counter()
    text = "Python 3.11.7 came out on 2023-12-04; card 4111 1111 1111 1112 fails Luhn; std::vector; 12:30:45."
    assert scrubber.scrub(text, counts) == text and not counts


def test_whitespace_html_and_nfc():
    assert clean_whitespace("a\r\nb \u200b\t\n\n\n\nc\x07  ") == "a\nb\n\nc"
    assert clean_whitespace("    indented code\n        stays") == "indented code\n        stays"
    assert strip_html("<p>Hello&nbsp;<b>world</b></p><script>x()</script> &amp;lt;i&amp;gt;") .strip() == "Hello\xa0world"
    cleaner = Cleaner(CleanSection())
    assert cleaner.text("Cafe\u0301") == "Caf\u00e9"  # NFC
    assert Cleaner(CleanSection(unicode_nfc=False, whitespace=False)).text(" Cafe\u0301 ") == " Cafe\u0301 "
