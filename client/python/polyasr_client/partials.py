"""The live hypothesis, rebuilt from ``partial`` messages by the delta rule."""

from __future__ import annotations

from typing import Any


class PartialText:
    """The current partial text, and what a display must do with each update.

    A ``delta`` is appended verbatim (the server never trims it); a partial
    without one replaces the text. A delta that would not reproduce the
    message's ``partial`` (a partial was lost with a dropped connection) is
    treated as a replacement, so the text never drifts from the server's.
    """

    def __init__(self) -> None:
        self.text = ""

    def apply(self, message: dict[str, Any]) -> str | None:
        """Fold one ``partial`` in; returns the delta to append, or None when
        the whole text was replaced."""
        partial = str(message.get("partial", ""))
        delta = message.get("delta")
        appended = isinstance(delta, str) and self.text + delta == partial
        self.text = partial
        return delta if appended else None
