"""PII scrubbing: e-mail addresses, IP addresses, card numbers and phone numbers (plus the user's own
patterns) become typed placeholders such as [EMAIL].

Each kind is a candidate pattern and a validator (Luhn for cards, `ipaddress` for IPs, a digit count
for phones), run one kind after another, so a candidate that fails one check can still be another
kind, and text outside a validated match is never touched.
"""

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

from tuneforge.errors import UserError

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
                   r"|(?<![\w:.])(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?(?![\w:])")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w])")


def _luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return text != "::"


def _phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 9 <= digits <= 15 and (text.startswith(("+", "(")) or any(c in text for c in " .-") or digits >= 10)


# name -> (pattern, validator, can the text hold one? from its digit count and characters);
# applied in this order. The third part skips regexes that cannot match (most texts).
BUILTIN: dict[str, tuple[re.Pattern, Callable[[str], bool], Callable[[str, int], bool]]] = {
    "EMAIL": (_EMAIL, lambda _: True, lambda text, digits: "@" in text),
    "IP_ADDRESS": (re.compile(f"{_IPV4.pattern}|{_IPV6.pattern}"), _ip, lambda text, digits: ":" in text or digits >= 4),
    "CARD_NUMBER": (_CARD, _luhn, lambda text, digits: digits >= 13),
    "PHONE": (_PHONE, _phone, lambda text, digits: digits >= 9),
}
_NO_DIGITS = str.maketrans("", "", "0123456789")


class PiiScrubber:
    def __init__(self, extra_patterns: dict[str, str]):
        self.kinds = dict(BUILTIN)
        for name, pattern in extra_patterns.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                raise UserError(f"data.clean.pii_patterns: name {name!r} must be UPPER_CASE letters, digits and _ "
                                "(it becomes the placeholder [NAME]).")
            try:
                self.kinds[name] = (re.compile(pattern), lambda _: True, lambda text, digits: True)
            except re.error as e:
                raise UserError(f"data.clean.pii_patterns.{name}: not a valid regular expression ({e}).") from None

    def scrub(self, text: str, counts: Counter) -> str:
        digits = len(text) - len(text.translate(_NO_DIGITS))
        for name, (pattern, valid, possible) in self.kinds.items():
            if possible(text, digits):
                text = pattern.sub(lambda m, name=name, valid=valid: _replace(m, name, valid, counts), text)
        return text


def _replace(match: re.Match, name: str, valid: Callable[[str], bool], counts: Counter) -> str:
    if not valid(match.group()):
        return match.group()
    counts[name] += 1
    return f"[{name}]"
