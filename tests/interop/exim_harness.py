"""A real Exim 4 on 127.0.0.1 for the interop suite: the second MTA, with
wording of its own and no enhanced status codes by default.

Debian's exim4-daemon-heavy conflicts with postfix as a package, so
tests/interop/install-servers.sh unpacks it (with dpkg-deb, outside the
package manager) into /opt/mailexpress-interop/exim.  Exim runs from there
with its own config, spool and Maildir in a temporary directory.

One service: STARTTLS, AUTH PLAIN and LOGIN offered only under TLS, and a
MAIL ACL allowing the same three accounts as the Postfix harness:
svc-any (any sender), svc-domain (any @corp.example), svc-self (its own).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from harness import ACCOUNTS, MaildirServer, clean_env, free_port, spawn, stop_process, wait_listening


EXIM_ROOT = Path(os.environ.get("MAILEXPRESS_EXIM_ROOT", "/opt/mailexpress-interop/exim"))
EXIM = EXIM_ROOT / "usr" / "sbin" / "exim4"


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the interop suite starts Exim and needs root"
    if not EXIM.exists():
        return f"{EXIM} is missing: run tests/interop/install-servers.sh"
    try:
        pwd.getpwnam("Debian-exim")
    except KeyError:
        return "the system user Debian-exim is missing: run tests/interop/install-servers.sh"
    return None


EXIM_CONF = r"""
primary_hostname = mx.example.org
exim_path = @EXIM@
domainlist local_domains = corp.example
spool_directory = @DIR@/spool
log_file_path = @DIR@/log/%slog
local_interfaces = 127.0.0.1
daemon_smtp_ports = @PORT@
never_users = root
host_lookup =
rfc1413_hosts =
tls_advertise_hosts = *
tls_certificate = @CERT@
tls_privatekey = @KEY@
auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}
acl_smtp_mail = acl_check_mail
acl_smtp_rcpt = acl_check_rcpt
keep_environment =

begin acl

acl_check_mail:
  deny    message = Authentication required
          !authenticated = *
  accept  condition = ${if or{ {eq{$authenticated_id}{svc-any}} \
                               {and{ {eq{$authenticated_id}{svc-domain}} \
                                     {eq{${domain:$sender_address}}{corp.example}} }} \
                               {eq{$sender_address}{$authenticated_id@corp.example}} }}
  deny    message = Sender address not allowed for this login

acl_check_rcpt:
  accept  authenticated = *
  deny    message = Relay not permitted

begin routers

everything:
  driver = accept
  transport = maildir

begin transports

maildir:
  driver = appendfile
  directory = @DIR@/mail/all
  maildir_format
  user = @UID@
  group = @GID@
  envelope_to_add
  return_path_add

begin authenticators

plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if eq{$auth3}{${lookup{$auth2}lsearch{@PASSWD@}}}}
  server_set_id = $auth2

login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = ${if eq{$auth2}{${lookup{$auth1}lsearch{@PASSWD@}}}}
  server_set_id = $auth1
"""


class EximHarness(MaildirServer):
    def __init__(self) -> None:
        super().__init__("mx-interop-exim-", ("localhost", "127.0.0.1", "mx.example.org"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _configure(self) -> Path:
        d = self.dir
        exim = pwd.getpwnam("Debian-exim")
        key = self._write("tls/key.pem", self._cert.private_key_pem.bytes().decode(), 0o640)
        os.chown(key, 0, exim.pw_gid)
        cert = self._write("tls/cert.pem", "".join(b.bytes().decode() for b in self._cert.cert_chain_pems))
        passwd = self._write("passwd", "".join(f"{login}: {pw}\n" for login, (pw, _a) in ACCOUNTS.items()), 0o640)
        os.chown(passwd, 0, exim.pw_gid)
        # delivery runs as the Exim user: Exim keeps no root privilege for a -C config
        for sub, owner in (("spool", exim), ("log", exim), ("mail", exim)):
            (d / sub).mkdir()
            os.chown(d / sub, owner.pw_uid, owner.pw_gid)
        values = {"@EXIM@": str(EXIM), "@DIR@": str(d), "@PORT@": str(self.port), "@CERT@": str(cert), "@KEY@": str(key),
                  "@PASSWD@": str(passwd), "@UID@": str(exim.pw_uid), "@GID@": str(exim.pw_gid)}
        text = EXIM_CONF
        for token, value in values.items():
            text = text.replace(token, value)
        return self._write("exim.conf", text)


    def start(self) -> EximHarness:
        conf = self._configure()
        check = subprocess.run([str(EXIM), "-C", str(conf), "-bV"], capture_output=True, text=True,
                               env=clean_env(), timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"exim -bV failed: {check.stdout}{check.stderr}")
        self.proc = spawn([str(EXIM), "-C", str(conf), "-bdf", "-oP", str(self.dir / "exim.pid")], clean_env())
        if not wait_listening({self.port}, self.proc):
            return self
        log = self.log()
        self.stop()
        raise RuntimeError(f"Exim did not start:\n{log[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.kill_leftovers()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        logs = sorted((self.dir / "log").glob("*log")) if (self.dir / "log").exists() else []
        return "\n".join(p.read_text(errors="replace") for p in logs)
