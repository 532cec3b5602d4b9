#!/usr/bin/env bash
# Boots the emulated hardware-KVM host (QEMU TCG, -cpu max: AMD SVM with nested paging,
# 1 GiB pages, LA57, PCID) built by build.sh, runs commands in it and reports.
#
#   run.sh                    the default list baked in by build.sh (every test executable
#                             with GUESTWALK_REQUIRE_KVM=1, vmm run/walk/translate/bench)
#   run.sh [NAME::]COMMAND... these shell commands instead, e.g.
#                             run.sh 'walk::vmm walk --format json' 'vmm translate c0000000'
#
# The serial console goes to guest-images/out/hwkvm/serial.log (and serial.ts.log, each
# line prefixed with the host's seconds since QEMU started). Exit status: 0 when the host
# reached /init, loaded KVM, every command exited 0 and it powered off; 1 otherwise.
#
# Environment: HWKVM_TIMEOUT (whole run, s, default 3600), HWKVM_CMD_TIMEOUT (one command,
# s, default 1200), HWKVM_MEMORY (MiB, default 4096), HWKVM_SMP (default 2),
# HWKVM_CPU (QEMU -cpu, default max; e.g. max,phys-bits=46 for a server-like MAXPHYADDR),
# HWKVM_ACCEL (QEMU -accel, default tcg; tcg,thread=single runs both CPUs on one thread),
# HWKVM_SILENCE (s without console output after which the host counts as stuck, default 300),
# HWKVM_QUIET=1 (print only the @@@ marker lines while running), HWKVM_OUT,
# HWKVM_COMMANDS=linux (without arguments, run the list in linux-commands instead of the
# default one). The Linux test guest of guest-images/linux/ (build it first with
# guest-images/linux/build.sh) is shipped to /hwkvm/linux in every run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${HWKVM_OUT:-$repo/guest-images/out/hwkvm}
total_timeout=${HWKVM_TIMEOUT:-3600}
cmd_timeout=${HWKVM_CMD_TIMEOUT:-1200}

for f in vmlinuz initramfs.cpio.gz; do
    [ -e "$out/$f" ] || { echo "hwkvm-run: $out/$f is missing: run build.sh first" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "hwkvm-run: qemu-system-x86_64 is missing: run build.sh" >&2; exit 1; }

# Per-run settings and commands go into a second cpio archive appended to the first: the
# kernel unpacks both, later files win. Nothing has to fit on the kernel command line
# (2048 bytes, with quoting rules of its own), and the big archive is not rebuilt.
overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
mkdir -p "$overlay/etc/hwkvm"
echo "HWKVM_CMD_TIMEOUT=$cmd_timeout" >"$overlay/etc/hwkvm/config"
# The Linux test guest (guest-images/linux/build.sh) goes to /hwkvm/linux whenever it
# was built: the default list's Linux tests need it (and fail without it).
linux_out=${LINUX_OUT:-$repo/guest-images/out/linux}
if [ -e "$linux_out/bzImage" ] && [ -e "$linux_out/initramfs.cpio.gz" ]; then
    mkdir -p "$overlay/hwkvm/linux"
    cp "$linux_out/bzImage" "$linux_out/initramfs.cpio.gz" "$here/linux-boot.sh" "$overlay/hwkvm/linux/"
    # The same kernel as an ELF vmlinux, for the PVH entry.
    [ ! -e "$linux_out/vmlinux" ] || cp "$linux_out/vmlinux" "$overlay/hwkvm/linux/"
else
    echo "hwkvm-run: no Linux test guest in $linux_out (guest-images/linux/build.sh): its tests will fail" >&2
fi
# HWKVM_EXTRA_ROOT: a directory whose files join the run's archive as they are (boot-bench.sh
# ships QEMU this way).
if [ -n "${HWKVM_EXTRA_ROOT:-}" ]; then
    cp -a "$HWKVM_EXTRA_ROOT"/. "$overlay"/
fi
case "${HWKVM_COMMANDS:-default}" in
    default) ;;
    linux)
        [ -d "$overlay/hwkvm/linux" ] || exit 1
        [ "$#" -gt 0 ] || grep -v '^#' "$here/linux-commands" >"$overlay/etc/hwkvm/commands"
        ;;
    *)
        echo "hwkvm-run: HWKVM_COMMANDS must be default or linux, not ${HWKVM_COMMANDS}" >&2
        exit 2
        ;;
esac
if [ "$#" -gt 0 ]; then
    i=0
    for arg in "$@"; do
        i=$((i + 1))
        if [[ "$arg" =~ ^([A-Za-z0-9_.:-]+)::(.*)$ ]]; then
            name=${BASH_REMATCH[1]} command=${BASH_REMATCH[2]}
        else
            # A name without spaces for the markers: the number and the command's words.
            name=$(printf '%d-%s' "$i" "$arg" | tr -c 'A-Za-z0-9_.-' '-' | cut -c1-40)
            command=$arg
        fi
        [[ "$command" != *$'\t'* && "$command" != *$'\n'* ]] || {
            echo "hwkvm-run: a command may not contain a tab or a newline" >&2
            exit 2
        }
        printf '%s\t%s\n' "$name" "$command"
    done >"$overlay/etc/hwkvm/commands"
fi
initrd=$out/initramfs-run.cpio.gz
{
    cat "$out/initramfs.cpio.gz"
    (cd "$overlay" && find . | LC_ALL=C sort | "$out/busybox/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -1
} >"$initrd"

serial=$out/serial.log
serial_ts=$out/serial.ts.log
timings=$out/timings-run.txt
: >"$serial"
: >"$serial_ts"

start=$EPOCHREALTIME
elapsed() { awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

echo "hwkvm-run: booting (timeout ${total_timeout}s, ${cmd_timeout}s per command), serial in $serial" >&2
# -nodefaults: no VGA, NIC or parallel port to probe (faster boot, nothing to configure).
# -no-reboot + panic=-1: a kernel panic ends QEMU instead of looping. softlockup_panic=1
# with watchdog_thresh=30: a CPU stuck in the host's kernel for 60 s (seen under TCG, in
# KVM ioctls) panics it, ending the run at once instead of at the whole-run timeout (the
# stuck task cannot be killed by the per-command timeout). stdin is /dev/null so that CI
# (no terminal) and a developer's shell behave the same.
# A host that prints nothing for HWKVM_SILENCE seconds is stuck (a task blocked in the
# host's kernel ignores the per-command timeout, and a lost interrupt can stop the whole
# emulated machine without a soft lockup): QEMU is stopped then, not at the whole-run
# timeout, and the summary says so. Every test binary prints at least once a minute
# ("has been running for over 60 seconds"), and the Linux tests print as each boot ends.
silence=${HWKVM_SILENCE:-300}
pidfile=$out/qemu.pid
rm -f "$pidfile"
set +e
timeout -k 10 "$total_timeout" qemu-system-x86_64 \
    -accel "${HWKVM_ACCEL:-tcg}" -cpu "${HWKVM_CPU:-max}" -m "${HWKVM_MEMORY:-4096}" -smp "${HWKVM_SMP:-2}" \
    -nodefaults -display none -monitor none -serial stdio -no-reboot -pidfile "$pidfile" \
    -kernel "$out/vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 softlockup_panic=1 watchdog_thresh=30" </dev/null 2>&1 |
    while true; do
        IFS= read -r -t "$silence" line
        status=$?
        if [ "$status" -gt 128 ]; then
            # read timed out: whatever it got of a partial line is in $line.
            note="@@@ HOST SILENT for ${silence}s: stopping QEMU"
            printf '%s%s\n' "${line:+$line }" "$note" >>"$serial"
            printf '%s %s\n' "$(elapsed)" "$note" >>"$serial_ts"
            printf '%s\n' "$note"
            [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
            continue
        elif [ "$status" -ne 0 ] && [ -z "$line" ]; then
            break
        fi
        line=${line%$'\r'}
        printf '%s\n' "$line" >>"$serial"
        printf '%s %s\n' "$(elapsed)" "$line" >>"$serial_ts"
        if [ "${HWKVM_QUIET:-0}" != 1 ] || [[ "$line" == "@@@ "* ]]; then
            printf '%s\n' "$line"
        fi
    done
qemu_rc=${PIPESTATUS[0]}
set -e
total=$(elapsed)

# The summary: one line per command from its markers, then the phase timings (host clock).
python3 "$here/summary.py" "$serial_ts" "$qemu_rc" "$total" "$timings"
