#!/usr/bin/env bash
# Installs what the build and the tests need when it is missing: Debian packages (compiler,
# libraries, the PyTorch/NumPy/Pillow/SentencePiece reference tools) and the npm packages the
# tokenizer tests compare against. Quiet and quick when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(build-essential clang pkg-config libjansson-dev zlib1g-dev libjpeg62-turbo-dev libpng-dev libwebp-dev
      libfreetype-dev fonts-dejavu-core libmicrohttpd-dev xxd
      python3 python3-torch python3-numpy python3-pil python3-sentencepiece libopenblas0-pthread)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# node and npm may come from another source than Debian (then npm is not a Debian package).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# headless browser for the web demo test (tests/node/serve_browser.mjs): Debian's, only when absent
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -f tests/node/package.json ] && ! (cd tests/node && npm ls --depth=0 >/dev/null 2>&1); then
    echo "install-deps: installing npm packages for the tokenizer and server tests"
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
