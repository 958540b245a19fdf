#!/usr/bin/env bash
# Make headless Chromium available for the report's browser test (tests/test_report_browser.py). Prints the
# chromium binary's path: $EDGETL_CHROMIUM, or chromium on the PATH, or, when running as root with apt-get,
# Debian's `chromium` package installed now. Prints nothing (and still exits 0) when none can be had: the test then
# skips and says why.
set -uo pipefail
for candidate in "${EDGETL_CHROMIUM:-}" "$(command -v chromium || true)" "$(command -v chromium-browser || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! apt-get install -y -q chromium >&2; then
    apt-get update -q >&2 && apt-get install -y -q chromium >&2
  fi
  command -v chromium || true
fi
exit 0
