# shellcheck shell=bash
# Sourced by boot-bench.sh and tlb-bench.sh: `ship_qemu DIR` copies this machine's
# qemu-system-x86_64, every shared library it loads (and the loader) and QEMU's microvm
# firmware into DIR at their own paths, for run.sh's HWKVM_EXTRA_ROOT: the emulated host
# can then run QEMU (microvm, -enable-kvm) beside vmm, and its image stays small otherwise.
ship_qemu() {
    local extra=$1 qemu lib fw
    qemu=$(command -v qemu-system-x86_64) || {
        echo "$(basename "$0"): qemu-system-x86_64 is missing (build.sh installs it)" >&2
        return 1
    }
    _ship() { mkdir -p "$extra$(dirname "$1")" && cp -L "$1" "$extra$1"; }
    _ship "$qemu"
    ldd "$qemu" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
        while read -r lib; do _ship "$lib"; done
    for fw in qboot.rom bios-microvm.bin linuxboot_dma.bin pvh.bin; do
        [ ! -e "/usr/share/qemu/$fw" ] || _ship "/usr/share/qemu/$fw"
    done
}
