"""What free text the system stores: the one rule every text field of a contract follows.

Free text (references, reasons, memos, names, descriptions) refuses the C0 control characters
other than tab, line feed and carriage return, and NUL always. PostgreSQL cannot store NUL in
`text` or `jsonb` (`invalid byte sequence for encoding "UTF8": 0x00`), so a NUL accepted at a
boundary would become an event that no projection can write; the other controls have no place
in a reference or a memo and are refused for the same reason a key refuses whitespace: what is
stored is what a person can read back. Refused, never silently stripped: an HTTP body gets
422 problem+json, a NATS message becomes a dead letter, and the caller learns why.

Lone UTF-16 surrogates need no rule here: msgspec refuses them while decoding JSON.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from msgspec import Meta

# `[^...]*` over the whole string; `$(?!\n)` because Python's `$` alone also accepts a trailing
# newline (contracts.money). The class is written with escapes so the exported JSON Schema
# carries the same pattern (ECMA-262 understands \xNN).
TEXT_PATTERN: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$(?!\n)"
_UNSTORABLE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def text_meta(*, min_length: int = 0, max_length: int, description: str | None = None,
              examples: list[Any] | None = None) -> Meta:
    """Constraints of a free-text field: its length bounds, and TEXT_PATTERN."""
    return Meta(min_length=min_length, max_length=max_length, pattern=TEXT_PATTERN,
                description=description, examples=examples)


def is_storable_text(value: str) -> bool:
    """True when ``value`` follows TEXT_PATTERN (for text that does not come through a
    contract, such as a provider's webhook)."""
    return _UNSTORABLE.search(value) is None


# Free text of up to 500 characters: reasons, memos, descriptions, failure messages.
Text = Annotated[str, text_meta(max_length=500)]
