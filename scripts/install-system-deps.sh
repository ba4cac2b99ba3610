#!/usr/bin/env bash
# Installs the Debian packages mmodal needs, only when they are missing: espeak-ng and flite (spoken queries),
# ffmpeg (voice clips as browsers and phones record them: M4A/AAC, WebM, Opus) and python3-venv (the project's virtual environment); with --browser also chromium-headless-shell,
# which the browser test drives.
set -euo pipefail

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v flite >/dev/null 2>&1 || missing+=(flite)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${1:-}" = "--browser" ]; then
  command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 \
    || missing+=(chromium-headless-shell)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "mmodal needs these system packages: ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
