#!/usr/bin/env bash
# Boot benchmark of issue 4, inside the emulated hardware-KVM host: `vmm` vs QEMU's microvm
# (`-enable-kvm -M microvm,rtc=on`) booting the same Linux test guest (guest-images/linux/)
# to the GUESTWALK-LINUX-INIT marker, RUNS times each, alternating, timed from the
# process's start to the marker line on its console (host clock, /proc/uptime). Prints
# every run, then the medians and vmm / QEMU. vmm boots the bzImage twice a run: as it
# does by default (decompressed by vmm) and with --guest-decompressor (as QEMU boots it).
#
#   guest-images/hwkvm/boot-bench.sh [RUNS]     (default 10; after build.sh and
#                                                 guest-images/linux/build.sh)
#
# QEMU and its shared libraries and firmware are copied from this machine into the run's
# extra archive (HWKVM_EXTRA_ROOT of run.sh), so the host image stays small otherwise.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-10}
# shellcheck source=ship-qemu.sh
. "$here/ship-qemu.sh"

extra=$(mktemp -d)
trap 'rm -rf "$extra"' EXIT
ship_qemu "$extra"
mkdir -p "$extra/hwkvm"
cat >"$extra/hwkvm/boot-bench-inner.sh" <<'INNER'
#!/bin/busybox sh
# Runs inside the emulated host: see guest-images/hwkvm/boot-bench.sh.
runs=$1
dir=/hwkvm/linux
cmdline="console=ttyS0 quiet panic=-1"
uptime() { cut -d' ' -f1 /proc/uptime; }
# Seconds from start to the marker on the console of the command "$@"; kills it then.
# Its console goes to /tmp/bench.log; a run without the marker prints its end.
time_to_marker() {
    start=$(uptime)
    # Bounded: a QEMU run once hung the emulated host's run forever; now it is one
    # missing time (NONE), and the medians say how many runs they are of.
    ( timeout -k 5 120 "$@" </dev/null 2>&1 & echo $! >/tmp/bench.pid; wait ) | tee /tmp/bench.log |
        awk -v start="$start" '/GUESTWALK-LINUX-INIT/ {
            getline up < "/proc/uptime"; split(up, a, " "); printf "%.2f\n", a[1] - start; exit }'
    kill "$(cat /tmp/bench.pid)" 2>/dev/null
    grep -q GUESTWALK-LINUX-INIT /tmp/bench.log || tail -n 15 /tmp/bench.log >&2
    sleep 1
}
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
: >/tmp/vmm.times
: >/tmp/vmm-guest-dec.times
: >/tmp/vmm-pvh.times
: >/tmp/qemu.times
: >/tmp/qemu-pvh.times
i=0
while [ "$i" -lt "$runs" ]; do
    i=$((i + 1))
    t=$(time_to_marker vmm run --kernel $dir/bzImage --initrd $dir/initramfs.cpio.gz --memory 512M --cmdline "$cmdline" --timeout 120)
    echo "run $i vmm ${t:-NONE}"; [ -n "$t" ] && echo "$t" >>/tmp/vmm.times
    # The same bzImage through its own decompressor in the guest, as QEMU boots it.
    t=$(time_to_marker vmm run --guest-decompressor --kernel $dir/bzImage --initrd $dir/initramfs.cpio.gz --memory 512M --cmdline "$cmdline" --timeout 120)
    echo "run $i vmm-guest-dec ${t:-NONE}"; [ -n "$t" ] && echo "$t" >>/tmp/vmm-guest-dec.times
    # The same kernel as an ELF vmlinux through its PVH entry (no decompressor), if shipped.
    if [ -e $dir/vmlinux ]; then
        t=$(time_to_marker vmm run --kernel $dir/vmlinux --initrd $dir/initramfs.cpio.gz --memory 512M --cmdline "$cmdline" --timeout 120)
        echo "run $i vmm-pvh ${t:-NONE}"; [ -n "$t" ] && echo "$t" >>/tmp/vmm-pvh.times
    fi
    t=$(time_to_marker /usr/bin/qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -m 512M -smp 1 \
        -nodefaults -no-user-config -display none -serial stdio \
        -kernel $dir/bzImage -initrd $dir/initramfs.cpio.gz -append "$cmdline")
    echo "run $i qemu ${t:-NONE}"; [ -n "$t" ] && echo "$t" >>/tmp/qemu.times
    # QEMU with the same ELF vmlinux (its PVH loader), against vmm-pvh.
    if [ -e $dir/vmlinux ]; then
        t=$(time_to_marker /usr/bin/qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -m 512M -smp 1 \
            -nodefaults -no-user-config -display none -serial stdio \
            -kernel $dir/vmlinux -initrd $dir/initramfs.cpio.gz -append "$cmdline")
        echo "run $i qemu-pvh ${t:-NONE}"; [ -n "$t" ] && echo "$t" >>/tmp/qemu-pvh.times
    fi
done
v=$(median </tmp/vmm.times); q=$(median </tmp/qemu.times)
echo "boot-bench: to GUESTWALK-LINUX-INIT, median of $(wc -l </tmp/vmm.times) vmm runs ${v} s, of $(wc -l </tmp/qemu.times) QEMU microvm runs ${q} s, vmm / QEMU = $(awk -v v="$v" -v q="$q" 'BEGIN { if (q > 0) printf "%.2f", v / q; else printf "n/a" }')"
ratio() { awk -v v="$1" -v q="$2" 'BEGIN { if (q > 0) printf "%.2f", v / q; else printf "n/a" }'; }
if [ -s /tmp/vmm-guest-dec.times ]; then
    g=$(median </tmp/vmm-guest-dec.times)
    echo "boot-bench: vmm with the guest's own decompressor (--guest-decompressor): median of $(wc -l </tmp/vmm-guest-dec.times) runs ${g} s, vmm-guest-dec / QEMU = $(ratio "$g" "$q")"
fi
if [ -s /tmp/vmm-pvh.times ]; then
    p=$(median </tmp/vmm-pvh.times)
    echo "boot-bench: vmm with the same kernel as an ELF vmlinux (PVH entry): median of $(wc -l </tmp/vmm-pvh.times) runs ${p} s, vmm-pvh / QEMU = $(ratio "$p" "$q")"
    if [ -s /tmp/qemu-pvh.times ]; then
        qp=$(median </tmp/qemu-pvh.times)
        echo "boot-bench: QEMU microvm with that vmlinux (PVH): median of $(wc -l </tmp/qemu-pvh.times) runs ${qp} s, vmm-pvh / QEMU-pvh = $(ratio "$p" "$qp")"
    fi
fi
[ "$(wc -l </tmp/vmm.times)" = "$runs" ] && [ "$(wc -l </tmp/qemu.times)" = "$runs" ]
INNER
HWKVM_EXTRA_ROOT=$extra exec "$here/run.sh" "boot-bench::sh /hwkvm/boot-bench-inner.sh $runs"
