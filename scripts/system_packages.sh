#!/usr/bin/env bash
# Installs the Debian packages some tests need, when this machine allows it (root with apt-get):
#   chromium          the real browser the QC-report and review-app tests drive with Playwright
#   libegl1 libgl1    VTK's headless EGL rendering with Mesa's llvmpipe (trame-slicer views)
#   libosmesa6        VTK's OSMesa fall-back when EGL is not usable
# Elsewhere it only says what is missing; the tests that need a package then skip with the reason.
set -uo pipefail
wanted=(chromium libegl1 libgl1 libosmesa6)
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing system packages for the browser and rendering tests: ${missing[*]} (log: .venv/apt.log)"
  mkdir -p .venv
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } > .venv/apt.log 2>&1; then
    echo "Could not install ${missing[*]} (see .venv/apt.log); the tests that need them will be skipped with the reason."
  fi
else
  echo "Not installed: ${missing[*]} (needs root and apt-get); the tests that need them will be skipped with the reason."
fi
exit 0
