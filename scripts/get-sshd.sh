#!/usr/bin/env bash
# Make an OpenSSH server binary available for the SSH tests (a throwaway sshd on a high port, started
# by the tests themselves). Uses the system's sshd when there is one; otherwise unpacks Debian's
# openssh-server (and libwrap0, the one library it needs beyond openssh-client's) into .data/openssh/
# without root and without installing or starting anything. Prints the sshd command to run.
set -euo pipefail
for candidate in "${EDGETL_SSHD:-}" "$(command -v sshd || true)" /usr/sbin/sshd; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; exit 0; fi
done
root="$(pwd)/.data/openssh"
wrapper="$root/sshd"
if [ ! -x "$wrapper" ]; then
  mkdir -p "$root/debs"
  (cd "$root/debs" && apt-get download openssh-server libwrap0 >&2)
  for deb in "$root"/debs/*.deb; do dpkg -x "$deb" "$root"; done
  libdir="$(dirname "$(find "$root/usr/lib" -name 'libwrap.so.0' | head -n 1)")"
  missing="$(LD_LIBRARY_PATH="$libdir" ldd "$root/usr/sbin/sshd" | grep 'not found' || true)"
  if [ -n "$missing" ]; then echo "sshd still lacks libraries: $missing" >&2; exit 1; fi
  # sshd re-executes itself by absolute path, so the wrapper execs the real binary with its library path.
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' \
    "$libdir" "$root/usr/sbin/sshd" > "$wrapper"
  chmod +x "$wrapper"
fi
echo "$wrapper"
