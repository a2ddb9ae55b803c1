"""Server replies and protocol stages.

The C core parses replies; this module only gives them a Python shape.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code, enhanced status code (RFC 3463) and text lines.

    ``lines`` are the texts after ``"250-"`` / ``"250 "``, the enhanced code
    included, exactly as the server sent them (decoded as UTF-8, undecodable
    bytes replaced).
    """

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    stage: Stage | None = None

    def __post_init__(self) -> None:
        if self.stage is not None and not isinstance(self.stage, Stage):
            object.__setattr__(self, "stage", Stage(self.stage))

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
