"""Type stub for the C extension mailexpress._core (see csrc/)."""
from collections.abc import Callable, Iterable, Sequence
from os import PathLike
from typing import IO, Any, Literal

from .reply import Reply

OPENSSL_VERSION: str
TIMEOUT_STAGES: tuple[str, ...]
DEFAULT_TIMEOUTS: dict[str, float]

def tls_context(
    *,
    verify: bool = True,
    ca_file: str | PathLike[str] | None = None,
    client_cert: str | PathLike[str] | None = None,
    client_key: str | PathLike[str] | None = None,
    min_tls_version: Literal["1.2", "1.3"] = "1.2",
    session_cache: bool = True,
) -> object: ...

def pack_records(
    pending: dict[int, Any],
    columns: tuple[Any, ...],
    blob: bytearray,
    kind: bytearray,
    obj: dict[int, object],
    tables: tuple[list[Any], list[Any], list[Any], list[Any]],
    index: tuple[dict[Any, int], ...],
    prefix: str,
    last: tuple[Any, int, Any, int, Any, int],
) -> tuple[Any, int, Any, int, Any, int]: ...
# messages rendered in C (csrc/proto/render.c, csrc/py/render.c): a
# compose.Prepared, or None when the Python builder must build it
_Consts = tuple[bytes, bytes, bytes, str, bytes]
def render_items(consts: _Consts, items: list[Any], date: bytes, counter: Any, id_prefix: bytes,
                 eight_bit: bool, prepared: type, /) -> list[Any]: ...
def render_rows(spec: tuple[Any, ...], consts: _Consts, rows: list[Any], date: bytes,
                counter: Any, id_prefix: bytes, eight_bit: bool, prepared: type, /) -> list[Any]: ...

class Session:
    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        security: Literal["starttls", "ssl", "none"] = "starttls",
        server_name: str | None = None,
        verify: bool = True,
        ca_file: str | PathLike[str] | None = None,
        client_cert: str | PathLike[str] | None = None,
        client_key: str | PathLike[str] | None = None,
        min_tls_version: Literal["1.2", "1.3"] = "1.2",
        ehlo_name: str = "localhost",
        timeouts: dict[str, float | None] | None = None,
        allow_insecure_auth: bool = False,
        helo_fallback: bool = False,
        auth_mechanisms: Sequence[str] | None = None,
        transcript: bool = True,
        tls_context: object | None = None,
    ) -> None: ...
    def connect(self) -> Reply: ...
    def ehlo(self, name: str | None = None) -> Reply: ...
    def starttls(self) -> Reply: ...
    def login(self, user: str, password: str, mechanism: str | None = None) -> Reply: ...
    def auth_oauth(
        self,
        user: str,
        token: str,
        mechanism: str = "XOAUTH2",
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> Reply: ...
    def auth(
        self,
        mechanism: str,
        step: Callable[[bytes | None], bytes | bytearray | None],
        *,
        secret: bool = True,
    ) -> Reply: ...
    def mail(self, sender: str, options: Sequence[str] | None = ()) -> Reply: ...
    def rcpt(self, recipient: str, options: Sequence[str] | None = ()) -> Reply: ...
    def data(self, body: bytes | bytearray | memoryview) -> Reply: ...
    def rset(self) -> Reply: ...
    def noop(self) -> Reply: ...
    def quit(self) -> Reply | None: ...
    def close(self) -> None: ...
    def send_raw(
        self,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: bytes | bytearray | memoryview | IO[bytes],
        mail_options: Sequence[str] | None = (),
        rcpt_options: Sequence[str] | None = (),
    ) -> tuple[dict[str, Reply], Reply]: ...
    def send_many_raw(
        self,
        messages: Iterable[tuple[Any, ...]],
        stop_on_error: bool = False,
    ) -> list[tuple[dict[str, Reply], Reply] | BaseException]: ...
    def _send_records(
        self,
        prepared: Sequence[tuple[Any, ...] | BaseException],
        stop_on_error: bool = False,
    ) -> list[Any]: ...
    def set_deadline(self, seconds: float | None) -> None: ...
    def try_sender(self, sender: str, recipient: str,
                   options: Sequence[str] | None = ()) -> tuple[Reply, Reply | None, bool]: ...
    @property
    def state(self) -> str: ...
    @property
    def capabilities(self) -> dict[str, str]: ...
    @property
    def banner(self) -> Reply | None: ...
    @property
    def ehlo_reply(self) -> Reply | None: ...
    @property
    def tls_active(self) -> bool: ...
    @property
    def authenticated(self) -> bool: ...
    @property
    def esmtp(self) -> bool: ...
    @property
    def tls_version(self) -> str | None: ...
    @property
    def tls_cipher(self) -> str | None: ...
    @property
    def tls_resumed(self) -> bool: ...
    @property
    def peer_certificate(self) -> bytes | None: ...
    @property
    def peer_cert_info(self) -> dict[str, Any] | None: ...
    @property
    def transcript(self) -> list[tuple[int, str, str]]: ...
    @property
    def connect_attempts(self) -> list[dict[str, Any]]: ...
    @property
    def peer_address(self) -> tuple[str, int] | None: ...
    @property
    def max_size(self) -> int | None: ...
    @property
    def resolve_ms(self) -> int: ...
