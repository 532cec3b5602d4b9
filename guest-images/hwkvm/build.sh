#!/usr/bin/env bash
# Builds the emulated hardware-KVM host of guest-images/hwkvm/README.md:
#   guest-images/out/hwkvm/vmlinuz            Debian's stock kernel
#   guest-images/out/hwkvm/initramfs.cpio.gz  busybox, kvm-amd and its dependencies, the
#                                             static vmm binary and test executables, /init
# Everything downloaded or built stays under guest-images/out/ (git-ignored) and is reused
# on the next run; delete guest-images/out/hwkvm to start cold.
#
# Environment:
#   HWKVM_KERNEL_PKG  Debian kernel package (default: what linux-image-amd64 depends on)
#   HWKVM_OUT         output directory (default: guest-images/out/hwkvm)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${HWKVM_OUT:-$repo/guest-images/out/hwkvm}
mkdir -p "$out"
timings=$out/timings-build.txt
: >"$timings"

log() { echo "hwkvm-build: $*" >&2; }

# Runs "$@" as one named phase and records its wall time (CI budgets are per phase).
phase() {
    local name=$1 start=$EPOCHREALTIME
    shift
    "$@"
    local secs
    secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    printf '%-12s %6s s\n' "$name" "$secs" | tee -a "$timings" >&2
}

# apt_update_once, download_deb, choose_kernel_package, unpack_busybox.
# shellcheck source=../debian-debs.sh
. "$here/../debian-debs.sh"

# Host tools. busybox is not installed: its static build is downloaded as a .deb like the
# kernel, so a machine with Debian's (dynamic, conflicting) busybox package is left alone.
#
# QEMU must be 8.0 or newer. Before 8.0 TCG's page walker sets Accessed and Dirty bits with
# a plain read-modify-write store, not a compare-and-exchange, so with two emulated CPUs
# (MTTCG) it can write back a page-table entry another CPU has just changed: a nested
# guest's own tables (Linux updating PTEs on one vCPU while the other walks them) or the
# nested page table that the host's KVM write-protects for dirty logging. Random triple
# faults of both our guests in this host, and its lock-ups, were that race. Debian 12 has
# 7.2; its backports archive has 10.0, which this installs.
# Empty when QEMU is missing (not a failed pipeline: set -e would end the script silently).
qemu_major() {
    { qemu-system-x86_64 --version 2>/dev/null || true; } | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p'
}

ensure_qemu() {
    local major
    major=$(qemu_major)
    if [ -n "$major" ] && [ "$major" -ge 8 ]; then
        return
    fi
    local codename=""
    # shellcheck disable=SC1091 # the machine's own file
    [ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    if [ "$codename" = bookworm ]; then
        local list=/etc/apt/sources.list.d/guestwalk-bookworm-backports.list
        if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            log "adding Debian's bookworm-backports archive for QEMU >= 8 ($list)"
            echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$list"
            apt_updated=0
        fi
        apt_update_once
        log "installing qemu-system-x86 from bookworm-backports (found: ${major:-none})"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >/dev/null
    else
        apt_update_once
        log "installing qemu-system-x86 (found: ${major:-none})"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            qemu-system-x86 >/dev/null
    fi
    major=$(qemu_major)
    if [ -z "$major" ] || [ "$major" -lt 8 ]; then
        log "QEMU ${major:-missing} is older than 8.0: its TCG corrupts nested page tables (see above)"
        exit 1
    fi
}

ensure_packages() {
    local missing=()
    ensure_qemu
    command -v python3 >/dev/null || missing+=(python3)
    command -v strip >/dev/null || missing+=(binutils)
    command -v gzip >/dev/null || missing+=(gzip)
    # crt-static needs glibc's static archives.
    [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

download() {
    choose_kernel_package "${HWKVM_KERNEL_PKG:-}" linux-image-amd64 'linux-image-*-amd64_*.deb'
    download_deb "$kpkg"
    download_deb busybox-static
}

# Unpacks vmlinuz and the module tree once per kernel package, then makes modules.dep:
# Debian's package does not ship it (depmod runs at install time), so busybox's depmod
# builds it from the modules' own depends= fields.
extract() {
    local deb
    # The downloaded static busybox: depmod and cpio here, everything in the initramfs.
    unpack_busybox
    deb=$(compgen -G "$out/debs/${kpkg}_*.deb" | head -n1)
    kdir=$out/kernel/$kpkg
    if [ ! -e "$kdir/.done" ]; then
        rm -rf "$kdir"
        mkdir -p "$kdir"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir" --wildcards './boot/vmlinuz-*' './lib/modules/*'
        kver=$(basename "$(compgen -G "$kdir/lib/modules/*")")
        "$busybox" depmod -b "$kdir" "$kver"
        touch "$kdir/.done"
    fi
    kver=$(basename "$(compgen -G "$kdir/lib/modules/*")")
    cp "$kdir/boot/vmlinuz-$kver" "$out/vmlinuz"
}

# Static executables: crt-static makes them runnable in an initramfs with no libc, and
# --target keeps the flag away from build scripts and proc macros (which must stay dynamic).
# A separate target directory leaves the normal build's cache untouched.
cargo_build() {
    (cd "$repo" && CARGO_INCREMENTAL=0 RUSTFLAGS="-C target-feature=+crt-static" cargo test --workspace --locked \
        --no-run --target x86_64-unknown-linux-gnu --target-dir "$out/target" \
        --message-format=json) >"$out/cargo.json"
    # Which executables to take: the vmm binary, and every test executable of the two
    # packages whose tests boot guests. NAME<TAB>PATH; "vmm-bin" is the binary itself.
    # Sorted: cargo reports artifacts in completion order, which changes from run to run.
    python3 - "$out/cargo.json" <<'EOF' | LC_ALL=C sort >"$out/executables.tsv"
import json, sys
for line in open(sys.argv[1]):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    pkg_id = msg["package_id"]          # path+file:///dir/vmm#0.1.0 or ...#name@0.1.0
    frag = pkg_id.rsplit("#", 1)[1]
    package = frag.split("@")[0] if "@" in frag else pkg_id.rsplit("#", 1)[0].rsplit("/", 1)[1]
    target, kind = msg["target"]["name"], msg["target"]["kind"][0]
    if package not in ("vmm", "vmm-core", "guestwalk-tests"):
        continue
    # A check of the source tree (which the host does not have), not of KVM.
    if target == "layering":
        continue
    if not msg["profile"]["test"]:
        if kind == "bin" and target == "vmm":
            print(f"vmm-bin\t{msg['executable']}")
        continue
    # lib and bin unit tests get the kind in their name; integration tests their own name.
    name = f"{package}.{kind}" if kind in ("lib", "bin") else f"{package}.{target}"
    print(f"{name}\t{msg['executable']}")
EOF
    grep -q '^vmm-bin' "$out/executables.tsv" || { log "no vmm binary in cargo's output"; exit 1; }
}

# The default command list: every test executable with GUESTWALK_REQUIRE_KVM=1 (they must
# fail, not skip, without /dev/kvm), then the CLI's main jobs. run.sh can replace it.
default_commands() {
    local name path
    while IFS=$'\t' read -r name path; do
        [ "$name" = vmm-bin ] && continue
        # The Linux tests (guestwalk-tests.linux) boot the images run.sh ships in
        # /hwkvm/linux; with GUESTWALK_REQUIRE_LINUX=1 a missing image fails them. Their
        # output is shown even when they pass: it holds the measured reboot and panic times.
        local show=
        [ "$name" != guestwalk-tests.linux ] || show=' --show-output'
        printf 'test:%s\tGUESTWALK_REQUIRE_KVM=1 GUESTWALK_REQUIRE_LINUX=1 GUESTWALK_LINUX_DIR=/hwkvm/linux /hwkvm/tests/%s%s\n' "$name" "$name" "$show"
    done <"$out/executables.tsv"
    # features bit0 = 1 GiB leaf, bit1 = PCID, bit2 = LA57 (vmm/core/src/guest/descriptor.rs).
    printf 'vmm-run\tvmm run --memory 64M\n'
    printf 'vmm-walk-json\tvmm walk --format json --all-address-spaces\n'
    printf 'vmm-walk-text\tvmm walk --all-address-spaces\n'
    # A 1 GiB leaf, 4 KiB and 2 MiB leaves, a hole, the direct map, a user page.
    printf 'vmm-translate\tvmm translate c0000000 c1234567 40000000 40004000 40400000 ffff888000000000 10000000000\n'
    # Not `vmm bench`: timings under TCG mean little, and its snapshot measurements write
    # gigabytes to /tmp, a tmpfs in this 4 GiB host (one run locked the host up there).
    # Run it by hand: run.sh 'vmm bench --runs 3'.
}

# newc cpio, gzip (the kernel unpacks it into its rootfs). Binaries lose their DWARF (they
# are 30 MiB each with it) but keep symbols for panic backtraces.
initramfs() {
    local root=$out/initramfs-root name path
    rm -rf "$root"
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,root,etc/hwkvm,hwkvm/bin,hwkvm/tests,lib/modules}
    cp "$bbdir/bin/busybox" "$root/bin/busybox"
    install -m 0755 "$here/init" "$root/init"

    # Load order from modules.dep: a module's dependencies, deepest first, then itself.
    local moddir=$kdir/lib/modules/$kver
    python3 - "$moddir/modules.dep" kvm-amd >"$root/etc/hwkvm/modules.list" <<'EOF'
import sys
deps = {}
for line in open(sys.argv[1]):
    mod, _, rest = line.partition(":")
    deps[mod] = rest.split()
by_name = {m.rsplit("/", 1)[1].removesuffix(".ko").replace("_", "-"): m for m in deps}
order = []
def visit(path):
    for dep in deps[path]:
        visit(dep)
    if path not in order:
        order.append(path)
visit(by_name[sys.argv[2]])
print("\n".join(order))
EOF
    while read -r path; do
        mkdir -p "$root/lib/modules/$(dirname "$path")"
        cp "$moddir/$path" "$root/lib/modules/$path"
        case "$path" in
            */kvm-amd.ko) echo "$path nested=1" ;;
            *) echo "$path" ;;
        esac
    done <"$root/etc/hwkvm/modules.list" >"$root/etc/hwkvm/modules"
    rm "$root/etc/hwkvm/modules.list"

    while IFS=$'\t' read -r name path; do
        if [ "$name" = vmm-bin ]; then
            # vmm's cli test runs env!("CARGO_BIN_EXE_vmm"), an absolute path fixed at
            # compile time. /init links that path to the binary after it has mounted its
            # file systems: the checkout may live under /tmp, which /init mounts a tmpfs on.
            strip --strip-debug -o "$root/hwkvm/bin/vmm" "$path"
            printf '%s\n' "$path" >"$root/etc/hwkvm/vmm-path"
        else
            strip --strip-debug -o "$root/hwkvm/tests/$name" "$path"
        fi
    done <"$out/executables.tsv"

    default_commands >"$root/etc/hwkvm/commands"
    cp "$root/etc/hwkvm/commands" "$out/default-commands.tsv"
    (cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) |
        gzip -1 >"$out/initramfs.cpio.gz.tmp"
    mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
    log "initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1), kernel $kver"
}

phase apt ensure_packages
phase download download
phase extract extract
phase cargo cargo_build
phase initramfs initramfs
log "done: $out/vmlinuz $out/initramfs.cpio.gz (timings in $timings)"
