"""Server replies and protocol stages.

The C core parses replies; this module only gives them a Python shape.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Reply", "Stage"]


class Stage(str, enum.Enum):
    """Where in the SMTP conversation something happened."""

    CONNECT = "CONNECT"
    TLS = "TLS"
    EHLO = "EHLO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "END_OF_DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"

    def __str__(self) -> str:
        return self.value


_BY_VALUE = {s.value: s for s in Stage}
_UNSET: Any = object()
#: Replies already made, shared: equal replies are one object (a server
#: answers thousands of messages alike); bounded (emptied when full).
_MADE: dict[tuple[Any, ...], Reply] = {}
_MADE_MAX = 256


@dataclass(frozen=True, slots=True, init=False)
class Reply:
    """One SMTP reply: code, enhanced status code (RFC 3463) and text lines.

    ``lines`` are the texts after ``"250-"`` / ``"250 "``, the enhanced code
    included, exactly as the server sent them (decoded as UTF-8, undecodable
    bytes replaced).  Replies are immutable; equal ones may be one object.
    """

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    stage: Stage | None = None

    def __new__(cls, code: int = _UNSET, enhanced: str | None = _UNSET,
                lines: tuple[str, ...] = _UNSET, stage: Stage | str | None = None) -> Reply:
        if code is _UNSET or enhanced is _UNSET or lines is _UNSET:
            if code is _UNSET and enhanced is _UNSET and lines is _UNSET and stage is None:
                return object.__new__(cls)      # copy and pickle fill it in
            raise TypeError("Reply() needs code, enhanced and lines")
        key = (cls, code, enhanced, lines, stage)
        try:
            got = _MADE.get(key)
        except TypeError:           # unhashable lines: made, not shared
            got = key = None        # type: ignore[assignment]
        if got is not None:
            return got
        if stage is not None and type(stage) is not Stage:
            stage = _BY_VALUE.get(stage) or Stage(stage)
        self = object.__new__(cls)
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "enhanced", enhanced)
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "stage", stage)
        if key is not None:
            if len(_MADE) >= _MADE_MAX:     # a server whose replies all differ: start again
                _MADE.clear()
            _MADE[key] = self
        return self

    @property
    def text(self) -> str:
        """All lines joined with newlines."""
        return "\n".join(self.lines)

    @property
    def message(self) -> str:
        """The text without the enhanced status code in front."""
        text = self.text
        if self.enhanced and text.startswith(self.enhanced):
            text = text[len(self.enhanced):].lstrip()
        return text

    @property
    def ok(self) -> bool:
        """2xx: the command succeeded."""
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        """4xx: a temporary failure; trying again later may succeed."""
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """5xx: a permanent failure."""
        return 500 <= self.code < 600

    def to_dict(self) -> dict[str, object]:
        """The JSON shape used in reports: ``{code, enhanced, text}``."""
        return {"code": self.code, "enhanced": self.enhanced, "text": self.text}

    def __str__(self) -> str:
        sep = "\n    "
        return f"{self.code} {sep.join(self.lines)}".rstrip()
