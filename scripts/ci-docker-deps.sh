#!/usr/bin/env bash
# What the image tests need (tests/conftest_docker.py): Debian's Docker engine, its registry, and debootstrap
# for the stand-in base image. Idempotent and quiet: installs only what is missing. Run as root (or with sudo).
set -euo pipefail

packages=(docker.io docker-registry debootstrap)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
echo "ci-docker-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
# RUNLEVEL=1: invoke-rc.d then starts no system dockerd; the tests start their own.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
