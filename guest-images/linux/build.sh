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

# The bzImage, and the only modules the guest loads: pvpanic (its core and the driver of
# the ACPI QEMU0001 device, uncompressed in Debian's package).
kdir=$out/kernel/$kpkg
if [ ! -e "$kdir/.done-pvpanic" ]; then
    rm -rf "$kdir"
    mkdir -p "$kdir"
    dpkg-deb --fsys-tarfile "$(compgen -G "$out/debs/${kpkg}_*.deb" | head -n1)" |
        tar -x -C "$kdir" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/misc/pvpanic/*'
    touch "$kdir/.done-pvpanic"
fi
cp "$(compgen -G "$kdir/boot/vmlinuz-*" | head -n1)" "$out/bzImage"

# The same kernel as an ELF vmlinux, for the PVH entry (vmm boots it without running the
# decompressor). Debian ships only the bzImage: its payload (where the setup header's
# payload_offset/payload_length say) is the compressed vmlinux, LZ4 for this kernel.
if [ ! -s "$out/vmlinux" ] || [ "$out/bzImage" -nt "$out/vmlinux" ]; then
    python3 - "$out/bzImage" "$out/vmlinux.payload" <<'EOF_PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
setup_sects = data[0x1f1] or 4
offset, length = struct.unpack_from("<II", data, 0x248)
start = (setup_sects + 1) * 512 + offset
open(sys.argv[2], "wb").write(data[start:start + length])
EOF_PY
    case "$(od -An -tx1 -N4 "$out/vmlinux.payload" | tr -d ' ')" in
        02214c18) decompress=(lz4 -dc) ;;
        28b52ffd) decompress=(zstd -dc) ;;
        fd377a58) decompress=(xz -dc) ;;
        1f8b08*) decompress=(gzip -dc) ;;
        *) log "unknown compression of the kernel payload"; exit 1 ;;
    esac
    if ! command -v "${decompress[0]}" >/dev/null; then
        apt_update_once
        log "installing ${decompress[0]}"
        pkg=${decompress[0]}; [ "$pkg" = xz ] && pkg=xz-utils
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    fi
    # The payload ends with the kernel's size (4 bytes) after the compressed stream, which
    # lz4 reports as a bad frame after writing everything: judge the output instead.
    "${decompress[@]}" "$out/vmlinux.payload" >"$out/vmlinux.tmp" || true
    [ "$(head -c 4 "$out/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
        { log "the decompressed kernel payload is not an ELF file"; exit 1; }
    mv "$out/vmlinux.tmp" "$out/vmlinux"
    rm -f "$out/vmlinux.payload"
fi

root=$out/initramfs-root
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp "$bbdir/bin/busybox" "$root/bin/busybox"
for module in pvpanic pvpanic-mmio; do
    cp "$(compgen -G "$kdir/lib/modules/*/kernel/drivers/misc/pvpanic/$module.ko" | head -n1)" "$root/lib/modules/"
done
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
echo "$out/vmlinux"
echo "$out/initramfs.cpio.gz"
