#!/usr/bin/env bash
# Builds the Linux test guest for `vmm run --kernel` (step 1 of Linux boot):
#   guest-images/out/linux/bzImage          Debian's stock cloud kernel (linux-image-*-cloud-amd64)
#   guest-images/out/linux/initramfs.cpio.gz busybox-static and an /init (init beside this
#                                           file) that prints GUESTWALK-LINUX-INIT and reboots
# Everything downloaded (`apt-get download`, cached .debs) or built stays under
# guest-images/out/linux/ (git-ignored). Prints the two paths on stdout, one a line.
#
# Environment:
#   LINUX_KERNEL_PKG  Debian kernel package (default: what linux-image-cloud-amd64 depends on)
#   LINUX_OUT         output directory (default: guest-images/out/linux)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${LINUX_OUT:-$repo/guest-images/out/linux}
mkdir -p "$out/debs"

log() { echo "linux-build: $*" >&2; }

# apt_update_once, download_deb, choose_kernel_package, unpack_busybox.
# shellcheck source=../debian-debs.sh
. "$here/../debian-debs.sh"

choose_kernel_package "${LINUX_KERNEL_PKG:-}" linux-image-cloud-amd64 'linux-image-*-cloud-amd64_*.deb'
download_deb "$kpkg"
download_deb busybox-static
# busybox-static: the only program in the guest besides thp.
unpack_busybox

# Only the bzImage is needed (no modules: the guest loads none).
kdir=$out/kernel/$kpkg
if [ ! -e "$kdir/.done" ]; then
    rm -rf "$kdir"
    mkdir -p "$kdir"
    dpkg-deb --fsys-tarfile "$(compgen -G "$out/debs/${kpkg}_*.deb" | head -n1)" |
        tar -x -C "$kdir" --wildcards './boot/vmlinuz-*'
    touch "$kdir/.done"
fi
cp "$(compgen -G "$kdir/boot/vmlinuz-*" | head -n1)" "$out/bzImage"

root=$out/initramfs-root
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys}
cp "$bbdir/bin/busybox" "$root/bin/busybox"
install -m 0755 "$here/init" "$root/init"
# The THP test process: static, so the initramfs needs no libc.
gcc -static -O2 -Wall -Werror -o "$root/bin/thp" "$here/thp.c"
# The kernel opens /dev/console for PID 1 before anything is mounted: without the node
# /init's output goes nowhere (init also mounts devtmpfs and reopens it, for non-root builds).
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || log "cannot mknod /dev/console (not root?)"
(cd "$root" && find . | LC_ALL=C sort | "$bbdir/bin/busybox" cpio -o -H newc 2>/dev/null) |
    gzip -9 >"$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
log "kernel $kpkg ($(du -h "$out/bzImage" | cut -f1)), initramfs $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
echo "$out/bzImage"
echo "$out/initramfs.cpio.gz"
