"""Real Windows-authentication peers for the interop suite, on 127.0.0.1:

  KerberosRealm         an MIT Kerberos KDC (Debian krb5-kdc) for the realm
                        CORP.EXAMPLE, created from nothing in a private
                        directory (own krb5.conf through KRB5_CONFIG, own kdc.conf
                        through KRB5_KDC_PROFILE, ``kdb5_util create -s``,
                        ``kadmin.local addprinc``), with a keytab for
                        ``smtp/mail.corp.example``;
  WindowsAuthHarness    the Postfix + Dovecot of harness.py with a Dovecot that
                        offers GSSAPI (its Kerberos mechanism, Debian
                        dovecot-gssapi, reading that keytab) and NTLM (through
                        Samba's ``ntlm_auth``, Debian winbind: Dovecot 2.3.14+
                        has no NTLM of its own, only ``auth_use_winbind``).

``ntlm_auth --helper-protocol=squid-2.5-ntlmssp --password=PW`` checks the
client's NTLM (LM, NTLMv1, NTLMv2) responses against one password, with no
domain and no daemon; Dovecot starts the helper with only the protocol
argument, so the harness writes a small wrapper that adds the password.

What decides who may do what (found on Dovecot 2.3.19): after GSSAPI succeeds
Dovecot looks the principal up in the passdb only for extra fields -- an
unknown principal still logs in; after NTLM through winbind it does no passdb
lookup at all, and ``ntlm_auth --password`` checks only the password, so any
user name with that password logs in.  The user name Dovecot reports is the
principal (``alice@CORP.EXAMPLE``) for GSSAPI, and ``DOMAIN\\user`` turned
into ``user@DOMAIN`` for NTLM (``bob@CORP``; the domain is the one the client
sends, which clients copy from the challenge's target name -- hence
``netbios name = CORP`` in the private smb.conf).  Postfix's sender-login map
is therefore the authorisation here: alice may send as alice@corp.example,
CORP\\bob as bob@corp.example, nobody else as anything.

Nothing system-wide is touched: no /etc/krb5.conf, no /etc/samba, no systemd.
"""
from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import PostfixHarness, clean_env, dovecot_conf, free_port, spawn, stop_process, wait_listening

REALM = "CORP.EXAMPLE"
SERVICE_HOST = "mail.corp.example"          # the SPN is smtp/<this>; the TLS certificate names it too
NTLM_DOMAIN = "CORP"

# Kerberos principals (password) and the address each may send as
KERBEROS_USERS = {
    "alice": ("alice-Kerb3ros!", "alice@corp.example"),
    # a real principal with a ticket, but no right to send as anyone: Postfix's
    # sender-login map, not Dovecot, decides (see WindowsAuthHarness)
    "carol": ("carol-Kerb3ros!", "carol@corp.example"),
}
# the one NTLM account ntlm_auth checks (user, password, address)
NTLM_USER = ("bob", "bob-Ntlm-Passw0rd!", "bob@corp.example")

TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "kdestroy", "klist", "ntlm_auth")


def missing_requirements() -> str | None:
    """Why these peers cannot run here, or None."""
    from harness import missing_requirements as base
    why = base()
    if why:
        return why
    for tool in TOOLS:
        if _which(tool) is None:
            return f"{tool} is not installed (bash tests/interop/install-servers.sh)"
    if not Path("/usr/lib/dovecot/modules/auth/libmech_gssapi.so").exists():
        return "Dovecot's GSSAPI mechanism is not installed (apt-get install dovecot-gssapi)"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next((f"{d}/{tool}" for d in ("/usr/sbin", "/usr/bin")
                                       if Path(f"{d}/{tool}").exists()), None)


class KerberosRealm:
    """An MIT KDC for CORP.EXAMPLE on 127.0.0.1 (UDP and TCP on one free port)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mx-krb5-"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.krb5_conf = self.dir / "krb5.conf"
        self.kdc_conf = self.dir / "kdc.conf"
        self.keytab = self.dir / "smtp.keytab"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for the Kerberos tools and clients that uses this realm only."""
        return clean_env(KRB5_CONFIG=str(self.krb5_conf), KRB5_KDC_PROFILE=str(self.kdc_conf),
                         KRB5_TRACE="/dev/null", **extra)

    def _run(self, *cmd: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        run = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=60,
                             env=env or self.env())
        if run.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({run.returncode}):\n{run.stdout}{run.stderr}"
                               f"\n{self.log()[-2000:]}")
        return run.stdout + run.stderr

    def _configure(self) -> None:
        d = self.dir
        self.krb5_conf.write_text(f"""\
[libdefaults]
  default_realm = {REALM}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  dns_canonicalize_hostname = false
  rdns = false
  udp_preference_limit = 1
[realms]
  {REALM} = {{
    kdc = 127.0.0.1:{self.port}
  }}
[domain_realm]
  .corp.example = {REALM}
  corp.example = {REALM}
""")
        self.kdc_conf.write_text(f"""\
[kdcdefaults]
  kdc_listen = 127.0.0.1:{self.port}
  kdc_tcp_listen = 127.0.0.1:{self.port}
[realms]
  {REALM} = {{
    database_name = {d}/db/principal
    key_stash_file = {d}/db/stash
    acl_file = {d}/db/kadm5.acl
    max_life = 1h
  }}
[logging]
  kdc = FILE:{d}/kdc.log
""")
        for p in (self.krb5_conf, self.kdc_conf):
            os.chmod(p, 0o644)
        (d / "db").mkdir(mode=0o700)
        (d / "db" / "kadm5.acl").write_text("")
        master = os.urandom(18).hex()
        self._run("kdb5_util", "create", "-s", "-r", REALM, "-P", master)
        for user, (password, _addr) in KERBEROS_USERS.items():
            self._run("kadmin.local", "-r", REALM, "-q", f"addprinc -pw {password} {user}")
        spn = f"smtp/{SERVICE_HOST}"
        self._run("kadmin.local", "-r", REALM, "-q", f"addprinc -randkey {spn}")
        self._run("kadmin.local", "-r", REALM, "-q", f"ktadd -k {self.keytab} {spn}")
        # Dovecot's auth process runs as the dovecot user and reads the keytab
        dovecot = pwd.getpwnam("dovecot")
        os.chown(self.keytab, 0, dovecot.pw_gid)
        os.chmod(self.keytab, 0o640)

    def start(self) -> KerberosRealm:
        self._configure()
        self.proc = spawn(["krb5kdc", "-n", "-P", str(self.dir / "kdc.pid")], self.env())
        if not wait_listening({self.port}, self.proc):
            return self
        log = self.log()
        self.stop()
        raise RuntimeError(f"the KDC did not start on 127.0.0.1:{self.port}:\n{log[-3000:]}")

    def kinit(self, user: str, password: str, ccache: Path, lifetime: str | None = None) -> None:
        """A ticket-granting ticket for user into the file ccache (nothing else)."""
        life = ["-l", lifetime] if lifetime else []
        self._run("kinit", *life, "-c", f"FILE:{ccache}", f"{user}@{REALM}", input=password + "\n")

    def rekey_service(self) -> None:
        """New keys for smtp/<host> in the KDC only: the server's keytab is now
        out of date (the classic SPN/keytab fault).  export_keytab() mends it."""
        self._run("kadmin.local", "-r", REALM, "-q", f"cpw -randkey smtp/{SERVICE_HOST}")

    def export_keytab(self) -> None:
        """The service's current keys added to the server's keytab (ktadd re-keys
        and writes the new version; the file keeps its owner and mode)."""
        self._run("kadmin.local", "-r", REALM, "-q", f"ktadd -k {self.keytab} smtp/{SERVICE_HOST}")

    def klist(self, ccache: Path) -> str:
        return self._run("klist", "-c", f"FILE:{ccache}")

    def log(self) -> str:
        p = self.dir / "kdc.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def leftover_processes(self) -> list[str]:
        out = subprocess.run(["pgrep", "-af", str(self.dir)], capture_output=True, text=True, env=clean_env(),
                             timeout=30).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class WindowsAuthHarness(PostfixHarness):
    """harness.py's Postfix, with a Dovecot of its own offering GSSAPI and NTLM
    only (an Exchange client connector with Basic authentication off).  Its
    submission services are the base harness's: STARTTLS, AUTH after TLS."""

    def __init__(self, realm: KerberosRealm) -> None:
        super().__init__()
        self.realm = realm

    def _configure(self) -> None:
        super()._configure()
        d = self.dir
        # who may send as what: each account its own address only
        bob, _pw, bob_addr = NTLM_USER
        alice_addr = KERBEROS_USERS["alice"][1]
        self._write("postfix/sender_login", f"/^{re.escape(alice_addr)}$/ alice@{REALM}\n"
                                            f"/^{re.escape(bob_addr)}$/ {bob}@{NTLM_DOMAIN}\n")
        # ntlm_auth: a private smb.conf (no /etc/samba), the one password, and
        # the argument Dovecot does not pass
        samba = d / "samba"
        samba.mkdir()
        smb_conf = self._write("samba/smb.conf", f"""\
[global]
  workgroup = {NTLM_DOMAIN}
  netbios name = {NTLM_DOMAIN}
  lock directory = {samba}
  state directory = {samba}
  cache directory = {samba}
  private dir = {samba}
  log file = {samba}/log.%m
""")
        helper = self._write("dovecot/ntlm-helper", f"""\
#!/bin/sh
# Dovecot runs: <this> --helper-protocol=squid-2.5-ntlmssp
exec {_which('ntlm_auth')} "$@" --configfile={smb_conf} --password={shlex.quote(NTLM_USER[1])}
""", 0o750)
        dovecot = pwd.getpwnam("dovecot")
        os.chown(helper, 0, dovecot.pw_gid)
        os.chown(samba, dovecot.pw_uid, dovecot.pw_gid)
        # Dovecot needs a passdb; GSSAPI consults it for extra fields only, NTLM
        # through winbind not at all (see the module docstring)
        users = self._write("dovecot/windows-users", f"alice@{REALM}::::::nopassword=y\n"
                                                       f"{bob}@{NTLM_DOMAIN}::::::nopassword=y\n")
        self._write("dovecot/dovecot.conf", dovecot_conf(d, "gssapi ntlm", f"""\
auth_username_format = %u
auth_gssapi_hostname = {SERVICE_HOST}
auth_krb5_keytab = {self.realm.keytab}
auth_use_winbind = yes
auth_winbind_helper_path = {helper}
auth_failure_delay = 0
auth_verbose = yes
auth_debug = yes
import_environment = TZ KRB5_CONFIG={self.realm.krb5_conf} KRB5RCACHEDIR={d}/dovecot/rcache
""", f"""\
passdb {{
  driver = passwd-file
  args = {users}
}}
""", penalty=False))
        rcache = d / "dovecot" / "rcache"
        rcache.mkdir(parents=True)
        os.chown(rcache, dovecot.pw_uid, dovecot.pw_gid)
