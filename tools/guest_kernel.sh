#!/usr/bin/env bash
# The Linux kernel that the NUMA guest tests boot under qemu
# (tools/numa_guest.bzl, tools/numa_guest_runner.sh).
#
# For: fetching Debian's current kernel image WITHOUT installing it (the
# package `apt-cache depends linux-image-amd64` names, `apt-get download`,
# `dpkg -x`), keeping only its vmlinuz in a cache outside the workspace, and
# telling the runner where it is. Not for: booting anything (the runner
# does), nor installing a kernel on this machine (never: /boot is untouched).
#
# Usage:
#   tools/guest_kernel.sh fetch   # tools/setup.sh calls this; a no-op when
#                                 # the image is present (one stat)
#   tools/guest_kernel.sh path    # prints the image's path (may not exist)
#
# The cache is $FRAMEALLOC_GUEST_KERNEL_DIR, default
# <home>/.cache/framealloc/guest-kernel, where <home> is the user's home
# from the password database, not $HOME: Bazel runs tests with another HOME,
# and the runner must find the same directory as setup did.
set -euo pipefail

# (No passwd entry, as in a container started with --user N: $HOME.)
home="$(getent passwd "$(id -u)" | cut -d: -f6 || true)"
dir="${FRAMEALLOC_GUEST_KERNEL_DIR:-${home:-$HOME}/.cache/framealloc/guest-kernel}"
image="$dir/vmlinuz"

log() { printf 'framealloc setup: %s\n' "$*" >&2; }

case "${1:-fetch}" in
  path)
    echo "$image"
    exit 0
    ;;
  fetch) ;;
  *)
    echo "usage: $0 fetch|path" >&2
    exit 2
    ;;
esac

[[ -s "$image" ]] && exit 0

# A missing kernel must not stop the build: only the guest tests need it,
# and they say so clearly. So every failure below warns and exits 0.
warn_and_exit() {
  log "$*"
  log "the NUMA guest tests (tag numa_guest) will fail until a kernel is at $image"
  exit 0
}

SUDO=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

package="$(apt-cache depends linux-image-amd64 2>/dev/null |
  awk '/Depends: linux-image-/ {print $2; exit}')"
if [[ -z "$package" ]]; then
  # A fresh machine may have no package lists yet.
  "${SUDO[@]}" apt-get update -qq >&2 || warn_and_exit "apt-get update failed"
  package="$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-/ {print $2; exit}')"
fi
[[ -n "$package" ]] ||
  warn_and_exit "apt-cache does not know linux-image-amd64; cannot fetch a guest kernel"

log "fetching the guest kernel $package (downloaded and unpacked, not installed) into $dir"
mkdir -p "$dir"
work="$(mktemp -d "$dir/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# apt-get download needs no root; as root, apt's sandbox user _apt could
# not write into root's home, so download as root. The exact name: a glob
# would fetch every kernel flavour.
apt_options=()
[[ $(id -u) -ne 0 ]] || apt_options=(-o APT::Sandbox::User=root)
(cd "$work" && apt-get download -qq "${apt_options[@]}" "$package" >&2) ||
  warn_and_exit "apt-get download $package failed"
dpkg -x "$work"/"$package"_*.deb "$work/root" ||
  warn_and_exit "dpkg -x of $package failed"
vmlinuz="$(ls "$work"/root/boot/vmlinuz-* 2>/dev/null | head -n 1)"
[[ -n "$vmlinuz" ]] || warn_and_exit "$package holds no boot/vmlinuz-*"
# The modules (most of the package) are not needed: Debian's kernel has
# NUMA, devtmpfs, the serial console and initramfs support built in.
cp "$vmlinuz" "$dir/$(basename "$vmlinuz")"
echo "$package" >"$dir/PACKAGE"
ln -sfn "$(basename "$vmlinuz")" "$image.tmp" && mv -T "$image.tmp" "$image"
log "guest kernel: $image -> $(basename "$vmlinuz")"
