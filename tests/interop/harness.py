"""A real Postfix + Dovecot on 127.0.0.1, in a private directory, for the
interop suite.  No systemd, no system configuration touched: Postfix runs
with its own config directory, spool and Maildir (``postfix -c DIR
start-fg``), Dovecot with its own config (``dovecot -F -c FILE``) serving
only SASL authentication to Postfix.

Services (each on its own port):
  submission       STARTTLS required, AUTH only after TLS, PLAIN and LOGIN,
                   sender checked at MAIL (smtpd_delay_reject = no)
  submission_rcpt  the same, sender checked at RCPT (smtpd_delay_reject = yes,
                   Postfix's default)
  submission_eod   the same, but the sender check sits in
                   smtpd_end_of_data_restrictions: every MAIL FROM is accepted and
                   a sender not owned by the login is refused at end of data
  submission_one   like submission, but one connection at a time per client
                   (smtpd_client_connection_count_limit = 1, loopback not exempt):
                   a second connection is greeted with 421
  smtps            implicit TLS (wrapper mode)
  insecure         a bad set-up: AUTH offered without any TLS
  open             a bad set-up: anonymous submission accepted (for the
                   local domain corp.example, as Exchange's "Anonymous users")

Accounts modelling the Exchange rights (smtpd_sender_login_maps +
reject_authenticated_sender_login_mismatch):
  svc-any     any sender            (ms-Exch-SMTP-Accept-Any-Sender)
  svc-domain  any @corp.example     (ms-Exch-SMTP-Accept-Authoritative-Domain-Sender)
  svc-self    only svc-self@corp.example

Every accepted message is delivered by virtual(8) into DIR/mail/all/
(a Maildir), whatever its recipient: nothing leaves the machine.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailexpress.testing.certs import test_certificates

ACCOUNTS = {
    "svc-any": ("any-Passw0rd!", "svc-any@corp.example"),
    "svc-domain": ("domain-Passw0rd!", "svc-domain@corp.example"),
    "svc-self": ("self-Passw0rd!", "svc-self@corp.example"),
}
SERVICES = ("submission", "submission_rcpt", "submission_eod", "submission_one", "smtps", "insecure", "open")


def missing_requirements() -> str | None:
    """Why the harness cannot run here, or None."""
    if os.geteuid() != 0:
        return "the interop suite starts Postfix and Dovecot and needs root"
    for tool in ("postfix", "postconf", "dovecot"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (apt-get install postfix dovecot-core)"
    for user in ("postfix", "dovecot", "dovenull"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"the system user {user!r} is missing (install the postfix and dovecot-core packages)"
    return None


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for the servers and the tools we run: without the
    sanitizer runtime a sanitized test run preloads (it is for our extension
    only; pgrep, postfix and dovecot must run as installed)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "PYTHONMALLOC", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    env.update(extra)
    return env


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A server in the foreground of a session of its own (stop_process ends
    the whole group), its output discarded (each logs to its directory)."""
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_listening(ports: set[int], proc: subprocess.Popen[bytes] | None = None,
                   seconds: float = 20) -> set[int]:
    """Waits until every port accepts a connection on 127.0.0.1, at most
    `seconds`, or until proc has exited; the ports still not listening."""
    waiting = set(ports)
    deadline = time.monotonic() + seconds
    while waiting and time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        for port in list(waiting):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                waiting.discard(port)
            except OSError:
                pass
        if waiting:
            time.sleep(0.1)
    return waiting


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to a spawned server's process group, SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def dovecot_conf(d: Path, mechanisms: str, passdbs: str, settings: str = "", penalty: bool = True) -> str:
    """A dovecot.conf serving SASL authentication only, to Postfix over
    d/dovecot/auth-postfix: no protocols, no TLS (Postfix holds it), users
    from `passdbs` (passdb blocks), a static userdb.  `settings` go after
    auth_mechanisms.  penalty=False switches off anvil's per-IP failure
    penalty: every loopback client shares one IP, and after a few refusals
    the penalty turns answers into 454 4.7.0 "Connection lost to
    authentication server"."""
    anvil = "" if penalty else "  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n"
    return f"""\
protocols =
base_dir = {d}/dovecot/run
state_dir = {d}/dovecot/state
log_path = {d}/dovecot/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
{settings}{passdbs}userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {d}/dovecot/auth-postfix {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
{anvil}}}
service stats {{
  chroot =
}}
"""


def serving(why: str | None, make):  # type: ignore[no-untyped-def]
    """A fixture's body: skips when the peers cannot run here (why), else
    starts make() for the fixture's scope and checks that stopping it left
    no process behind."""
    if why:
        pytest.skip(f"interop suite cannot run here: {why}")
    h = make().start()
    try:
        yield h
    finally:
        h.stop()
        left = h.leftover_processes()
        assert not left, f"processes left behind: {left}"


@dataclass
class Delivered:
    path: Path
    data: bytes


class MaildirServer:
    """What both harnesses share: a private directory, a Maildir of what was
    delivered, and the processes that must be gone afterwards."""

    def __init__(self, prefix: str, cert_names: tuple[str, ...]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        os.chmod(self.dir, 0o755)
        certs = test_certificates()
        self.ca_file = certs.ca_file
        self._cert = certs.ca.issue_cert(*cert_names)  # type: ignore[attr-defined]

    def _write(self, rel: str, text: str, mode: int = 0o644) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chmod(p, mode)
        return p

    def log(self) -> str:
        raise NotImplementedError

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds ``text``: a server writes its log line after
        it has answered the client, so a check right after the reply races it.
        Gives up after ``timeout`` seconds and returns the log as it is."""
        end = time.monotonic() + timeout
        while True:
            log = self.log()
            if text in log or time.monotonic() > end:
                return log
            time.sleep(0.05)

    def leftover_processes(self) -> list[str]:
        out = subprocess.run(["pgrep", "-af", str(self.dir)], capture_output=True, text=True, env=clean_env(),
                             timeout=30).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]

    def kill_leftovers(self) -> None:
        left = subprocess.run(["pgrep", "-f", str(self.dir)], capture_output=True, text=True, env=clean_env(),
                              timeout=30).stdout.split()
        for pid in left:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def delivered(self) -> list[Delivered]:
        new = self.dir / "mail" / "all" / "new"
        if not new.exists():
            return []
        return [Delivered(p, p.read_bytes()) for p in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns)]

    def wait_for(self, marker: bytes, timeout: float = 20) -> Delivered:
        """The delivered message containing marker (waits for the queue)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.delivered():
                if marker in m.data:
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no message with {marker!r} was delivered; log:\n{self.log()[-3000:]}")


class PostfixHarness(MaildirServer):
    def __init__(self) -> None:
        super().__init__("mx-interop-", ("localhost", "127.0.0.1", "mail.corp.example"))
        self.ports = {name: free_port() for name in SERVICES}
        self.procs: list[subprocess.Popen[bytes]] = []

    # -- configuration ------------------------------------------------------------

    def _configure(self) -> None:
        d = self.dir
        key = self._write("tls/key.pem", self._cert.private_key_pem.bytes().decode(), 0o600)
        chain = "".join(b.bytes().decode() for b in self._cert.cert_chain_pems)
        cert = self._write("tls/cert.pem", chain)
        nobody = pwd.getpwnam("nobody")
        mail = d / "mail"
        mail.mkdir()
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        self._write("postfix/sender_login", "\n".join([
            r"/^svc-self@corp\.example$/ svc-self, svc-domain, svc-any",
            r"/@corp\.example$/ svc-domain, svc-any",
            r"/.*/ svc-any",
        ]) + "\n")
        self._write("postfix/transport", "/.*/ virtual:\n")
        self._write("postfix/mailboxes", "/.*/ all/\n")
        self._write("postfix/main.cf", f"""\
compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
meta_directory = /etc/postfix
myhostname = mail.corp.example
mydomain = corp.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
smtputf8_enable = yes
message_size_limit = 52428800
smtpd_banner = $myhostname ESMTP Postfix
# add no headers to what clients send: tests compare bytes
local_header_rewrite_clients =
always_add_missing_headers = no
alias_maps =
alias_database =
local_recipient_maps =
# deliver everything into one Maildir
transport_maps = regexp:{d}/postfix/transport
virtual_mailbox_domains = corp.example
virtual_mailbox_base = {mail}
virtual_mailbox_maps = regexp:{d}/postfix/mailboxes
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
virtual_mailbox_limit = 0
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {d}/dovecot/auth-postfix
smtpd_sasl_auth_enable = no
smtpd_sender_login_maps = regexp:{d}/postfix/sender_login
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_client_restrictions =
""")
        p = self.ports
        senders = ("-o smtpd_sender_restrictions=reject_authenticated_sender_login_mismatch,"
                   "permit_sasl_authenticated,reject")
        auth = f"-o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=encrypt {senders}"
        self._write("postfix/master.cf", f"""\
127.0.0.1:{p['submission']} inet n - n - - smtpd -o syslog_name=submission {auth} -o smtpd_delay_reject=no
127.0.0.1:{p['submission_rcpt']} inet n - n - - smtpd -o syslog_name=submission_rcpt {auth} -o smtpd_delay_reject=yes
127.0.0.1:{p['submission_eod']} inet n - n - - smtpd -o syslog_name=submission_eod -o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=encrypt -o smtpd_sender_restrictions=permit_sasl_authenticated,reject -o smtpd_end_of_data_restrictions=reject_authenticated_sender_login_mismatch,permit_sasl_authenticated,reject -o smtpd_delay_reject=no
127.0.0.1:{p['submission_one']} inet n - n - - smtpd -o syslog_name=submission_one {auth} -o smtpd_delay_reject=no -o smtpd_client_connection_count_limit=1 -o smtpd_client_event_limit_exceptions=
127.0.0.1:{p['smtps']} inet n - n - - smtpd -o syslog_name=smtps -o smtpd_tls_wrappermode=yes -o smtpd_sasl_auth_enable=yes {senders} -o smtpd_delay_reject=no
127.0.0.1:{p['insecure']} inet n - n - - smtpd -o syslog_name=insecure -o smtpd_tls_security_level=none -o smtpd_tls_auth_only=no -o smtpd_sasl_auth_enable=yes {senders} -o smtpd_delay_reject=no
127.0.0.1:{p['open']} inet n - n - - smtpd -o syslog_name=open -o smtpd_relay_restrictions=permit_sasl_authenticated,reject_unauth_destination -o smtpd_recipient_restrictions=permit -o smtpd_sender_restrictions=
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
""")
        users = "".join(f"{login}:{{PLAIN}}{pw}::::::\n" for login, (pw, _addr) in ACCOUNTS.items())
        users_file = self._write("dovecot/users", users, 0o644)
        self._write("dovecot/dovecot.conf", dovecot_conf(d, "plain login", f"""\
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {users_file}
}}
"""))
        (d / "dovecot" / "run").mkdir(exist_ok=True)
        (d / "dovecot" / "state").mkdir(exist_ok=True)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> PostfixHarness:
        self._configure()
        d = self.dir
        env = clean_env(MAIL_CONFIG=str(d / "postfix"))
        self.procs.append(spawn(["dovecot", "-F", "-c", str(d / "dovecot" / "dovecot.conf")], env))
        (d / "spool").mkdir(mode=0o755)
        (d / "data").mkdir(mode=0o700)
        pf = pwd.getpwnam("postfix")
        os.chown(d / "data", pf.pw_uid, pf.pw_gid)
        for step in (["set-permissions", "create-missing"], ["check"]):
            run = subprocess.run(["postfix", "-c", str(d / "postfix"), *step], env=env,
                                 capture_output=True, text=True, timeout=60)
            if run.returncode != 0:
                raise RuntimeError(f"postfix {' '.join(step)} failed:\n{self.log()[-3000:]}")
        self.procs.append(spawn(["postfix", "-c", str(d / "postfix"), "start-fg"], env))
        waiting = wait_listening(set(self.ports.values()), seconds=30)
        if waiting or not (d / "dovecot" / "auth-postfix").exists():
            log = self.log()
            self.stop()
            raise RuntimeError(f"Postfix/Dovecot did not start (ports {sorted(waiting)}):\n{log[-3000:]}")
        return self

    def stop(self) -> None:
        d = self.dir
        try:
            subprocess.run(["postfix", "-c", str(d / "postfix"), "stop"], capture_output=True, timeout=30,
                           env=clean_env(MAIL_CONFIG=str(d / "postfix")))
        except subprocess.TimeoutExpired:
            pass
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.kill_leftovers()       # anything still running from our directory is ours to end
        shutil.rmtree(d, ignore_errors=True)

    def log(self) -> str:
        parts = []
        for rel in ("maillog", "dovecot/dovecot.log"):
            p = self.dir / rel
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)
