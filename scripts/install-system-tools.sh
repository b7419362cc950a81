#!/usr/bin/env bash
# Install the command-line tools the tests and benchmarks compare against:
# GNU tar, bsdtar, zstd, pigz, age and GNU time, and systemd-analyze, which checks the
# systemd unit in contrib/. Does nothing when they are already there.
set -euo pipefail

missing=()
tar --version 2>/dev/null | grep -q "GNU tar" || missing+=(tar)
command -v bsdtar >/dev/null 2>&1 || missing+=(libarchive-tools)  # foreign archives to read
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v pigz >/dev/null 2>&1 || missing+=(pigz)
command -v age >/dev/null 2>&1 || missing+=(age)  # encrypted archives restored without obs-backup
[ -x /usr/bin/time ] || missing+=(time)  # GNU time: the benchmark's peak-RSS probe
# The unit is checked offline; systemd need not be running, here or in a container.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-tools: missing ${missing[*]} and no apt-get; install them by hand" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-system-tools: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
