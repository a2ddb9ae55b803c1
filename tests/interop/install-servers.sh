#!/usr/bin/env bash
# Installs the real mail servers of the interop suite on Debian (as root):
#  - postfix and dovecot-core from Debian, left unconfigured ("No configuration"):
#    no system mail server is set up or started; the suite runs its own
#    instances on 127.0.0.1;
#  - Exim 4 (exim4-daemon-heavy) unpacked with dpkg-deb into
#    /opt/mailexpress-interop/exim, because as a package it conflicts with
#    postfix (both provide mail-transport-agent); its libraries come from
#    Debian, and its system user Debian-exim is created as its package would.
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

echo "interop servers ready: $(postconf -d mail_version 2>/dev/null), dovecot $(dovecot --version | cut -d' ' -f1), $("$root/usr/sbin/exim4" -bV -C /dev/null 2>/dev/null | head -1)"
