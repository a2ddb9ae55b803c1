#!/usr/bin/env bash
# Installs the real mail servers of the interop suite on Debian (as root):
#  - postfix and dovecot-core from Debian, left unconfigured ("No configuration"):
#    no system mail server is set up or started; the suite runs its own
#    instances on 127.0.0.1;
#  - Exim 4 (exim4-daemon-heavy) unpacked with dpkg-deb into
#    /opt/mailexpress-interop/exim, because as a package it conflicts with
#    postfix (both provide mail-transport-agent); its libraries come from
#    Debian, and its system user Debian-exim is created as its package would;
#  - the Windows-authentication peers (kerberos_harness.py): MIT Kerberos
#    (krb5-kdc; krb5-admin-server for kadmin.local; krb5-user for kinit),
#    Dovecot's GSSAPI mechanism (dovecot-gssapi), Samba's ntlm_auth (winbind),
#    libkrb5-dev (pip's gssapi, under pyspnego[kerberos], builds against it),
#    and two independent clients to check those peers with: GNU gsasl
#    (GSSAPI) and swaks with libauthen-ntlm-perl (NTLM).  krb5-config's
#    debconf questions are answered beforehand (the suite uses its own
#    krb5.conf through KRB5_CONFIG, never /etc/krb5.conf), and the packages'
#    own daemons (krb5kdc, kadmind, winbindd) are not started by the install:
#    the suite starts its own KDC on 127.0.0.1 and needs no winbindd.
# Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
root=/opt/mailexpress-interop/exim
echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
apt-get install -y -qq postfix dovecot-core >/dev/null
if [ ! -x "$root/usr/sbin/exim4" ]; then
  # the libraries exim4-daemon-heavy links against
  libs=$(apt-cache depends exim4-daemon-heavy | awk '/Depends: lib/ {print $2}' | tr -d '<>' | sort -u)
  apt-get install -y -qq $libs >/dev/null
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download exim4-daemon-heavy exim4-base 2>/dev/null)
  mkdir -p "$root"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$tmp"
fi
id Debian-exim >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
  --home-dir /var/spool/exim4 --shell /usr/sbin/nologin Debian-exim

windows_auth="krb5-kdc krb5-admin-server krb5-user dovecot-gssapi winbind libkrb5-dev gsasl swaks libauthen-ntlm-perl"
missing=$(for p in $windows_auth; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || echo "$p"
done)
if [ -n "$missing" ]; then
  printf '%s\n' \
    'krb5-config krb5-config/default_realm string EXAMPLE.TEST' \
    'krb5-config krb5-config/kerberos_servers string' \
    'krb5-config krb5-config/admin_server string' \
    'krb5-config krb5-config/add_servers_realm string EXAMPLE.TEST' \
    'krb5-config krb5-config/add_servers boolean false' \
    'krb5-config krb5-config/read_conf boolean true' \
    'krb5-kdc krb5-kdc/debconf boolean false' | debconf-set-selections
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then        # no daemon starts during this install (a machine's own policy is kept)
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq $missing >/dev/null
fi

echo "interop servers ready: $(postconf -d mail_version 2>/dev/null), dovecot $(dovecot --version | cut -d' ' -f1)," \
  "$("$root/usr/sbin/exim4" -bV -C /dev/null 2>/dev/null | head -1), MIT Kerberos $(dpkg-query -W -f='${Version}' krb5-kdc)," \
  "$(ntlm_auth --version), $(gsasl --version | head -1)"
