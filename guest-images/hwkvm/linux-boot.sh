#!/bin/busybox sh
# shellcheck shell=sh
# Runs inside the emulated hardware-KVM host (HWKVM_COMMANDS=linux, see README.md): boots
# the Linux test guest of guest-images/linux/ with `vmm run --kernel`, prefixes each line
# of its console with the host's seconds since vmm started, and passes only when the
# guest's /init printed GUESTWALK-LINUX-INIT with the expected CPU count and the VM ended
# cleanly (status 0: the guest's ACPI power-off).
#
#   linux-boot.sh [CMDLINE [MEMORY [VCPUS]]]   default "console=ttyS0 quiet panic=-1" 512M 1
cmdline=${1:-console=ttyS0 quiet panic=-1}
memory=${2:-512M}
vcpus=${3:-1}
dir=/hwkvm/linux
log=/tmp/linux-boot.$$.log
uptime_secs() { cut -d' ' -f1 /proc/uptime; }

echo "linux-boot: vmm run --kernel $dir/bzImage --initrd $dir/initramfs.cpio.gz --cmdline \"$cmdline\" --memory $memory --vcpus $vcpus"
start=$(uptime_secs)
# pipefail: the status of vmm, not of the timestamping loop.
set -o pipefail
vmm run --kernel "$dir/bzImage" --initrd "$dir/initramfs.cpio.gz" --cmdline "$cmdline" \
    --memory "$memory" --vcpus "$vcpus" --timeout 300 2>&1 |
    while IFS= read -r line; do
        printf '[%7s] %s\n' "$(awk -v a="$start" -v b="$(uptime_secs)" 'BEGIN { printf "%.2f", b - a }')" "$line"
    done | tee "$log"
rc=$?
marker=$(grep -m1 GUESTWALK-LINUX-INIT "$log")
echo "linux-boot: vmm rc=$rc, marker: ${marker:-MISSING}"
[ "$rc" = 0 ] && [ -n "$marker" ] && case "$marker" in *" cpus=$vcpus"*) true ;; *) false ;; esac
