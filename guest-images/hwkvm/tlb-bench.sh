#!/usr/bin/env bash
# Issue 4's second benchmark, inside the emulated hardware-KVM host: the walker against
# QEMU's `info tlb` on the same guest state.
#
# QEMU microvm boots the Linux test guest (guest-images/linux/) with guestwalk.linger, so
# its THP process spins after signalling; QEMU's monitor then stops the guest (with that
# process's CR3 loaded), reads CR3/CR4/EFER (`info registers`), times `info tlb` (RUNS
# times, fastest kept, less the fastest of a trivial command: the monitor's round trip),
# and saves guest RAM (`pmemsave`). `vmm inspect` then walks that memory with those
# registers, --format tlb (QEMU's format), timed the same way less the fastest of an
# inspect of one empty page (process start, mapping the file). Both listings must be the
# same lines (vmm's tlb format is QEMU's, flag for flag).
#
#   guest-images/hwkvm/tlb-bench.sh [RUNS]    (default 5; after build.sh and
#                                               guest-images/linux/build.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-5}
# shellcheck source=ship-qemu.sh
. "$here/ship-qemu.sh"

extra=$(mktemp -d)
trap 'rm -rf "$extra"' EXIT
ship_qemu "$extra"
mkdir -p "$extra/hwkvm"
cat >"$extra/hwkvm/tlb-bench-inner.sh" <<'INNER'
#!/bin/busybox sh
# Runs inside the emulated host: see guest-images/hwkvm/tlb-bench.sh.
runs=$1
dir=/hwkvm/linux
# Seconds since boot with nanosecond resolution (/proc/uptime has 10 ms; busybox date no %N).
up() { awk '/^now at/ { printf "%.6f\n", $3 / 1e9; exit }' /proc/timer_list; }
fail() { echo "tlb-bench: $*" >&2; exit 1; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f\n", b - a }'; }
min() { sort -n | head -n 1; }
cd /tmp  # pmemsave gets a relative name: HMP reads "/" in its arguments as division
mkfifo /tmp/mon || fail "mkfifo"
/usr/bin/qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -m 512M -smp 1 \
    -nodefaults -no-user-config -display none -serial file:/tmp/serial -monitor stdio \
    -kernel $dir/bzImage -initrd $dir/initramfs.cpio.gz \
    -append "console=ttyS0 quiet panic=-1 guestwalk.linger=600" </tmp/mon >/tmp/mon.out 2>&1 &
qemu_pid=$!
exec 3>/tmp/mon
i=0
until grep -q "GUESTWALK-THP lingering" /tmp/serial 2>/dev/null; do
    i=$((i + 1)); [ "$i" -lt 600 ] || { cat /tmp/serial; fail "the guest's THP process never lingered"; }
    sleep 0.2
done
grep GUESTWALK /tmp/serial
sleep 1
# Sends one monitor command and waits until its output is complete (the `info version`
# sent after it has answered); prints the seconds that took.
versions() { grep -c '^v\?[0-9][0-9]*\.[0-9][0-9]*\.[0-9]' /tmp/mon.out || true; }
mon() {
    n=$(versions); t0=$(up)
    printf '%s\ninfo version\n' "$1" >&3
    j=0
    until [ "$(versions)" -gt "$n" ]; do
        j=$((j + 1)); [ "$j" -lt 60000 ] || fail "the monitor did not answer '$1'"
        usleep 2000
    done
    secs "$t0" "$(up)"
}
mon stop >/dev/null
mon "info registers" >/dev/null
cr3=$(grep -o 'CR3=[0-9a-f]*' /tmp/mon.out | tail -n 1 | cut -d= -f2)
cr4=$(grep -o 'CR4=[0-9a-f]*' /tmp/mon.out | tail -n 1 | cut -d= -f2)
efer=$(grep -o 'EFER=[0-9a-f]*' /tmp/mon.out | tail -n 1 | cut -d= -f2)
rip=$(grep -o 'RIP=[0-9a-f]*' /tmp/mon.out | tail -n 1 | cut -d= -f2)
[ -n "$cr3" ] && [ -n "$cr4" ] && [ -n "$efer" ] || fail "no CR3/CR4/EFER in the monitor's output"
echo "tlb-bench: stopped at RIP=$rip CR3=$cr3 CR4=$cr4 EFER=$efer"
: >/tmp/base.t; : >/tmp/qemu.t
k=0
while [ "$k" -lt "$runs" ]; do
    k=$((k + 1))
    mon "info status" >>/tmp/base.t
    start_line=$(wc -l </tmp/mon.out)
    mon "info tlb" >>/tmp/qemu.t
done
# The last `info tlb`'s lines.
tail -n +"$((start_line + 1))" /tmp/mon.out | grep -E '^[0-9a-f]{16}: [0-9a-f]{16} ' >/tmp/qemu.tlb || true
mon "pmemsave 0 0x20000000 mem.raw" >/dev/null
printf 'quit\n' >&3
wait "$qemu_pid" || true
[ -s /tmp/mem.raw ] || { tail -n 5 /tmp/mon.out; fail "pmemsave wrote nothing"; }
bits=$(grep -m1 -o '[0-9]* bits physical' /proc/cpuinfo | cut -d' ' -f1)
inspect() {
    vmm inspect --memory /tmp/mem.raw --cr3 "$cr3" --cr4 "$cr4" --efer "$efer" --maxphyaddr "${bits:-52}" --format tlb "$@"
}
: >/tmp/vbase.t; : >/tmp/vmm.t; : >/tmp/vself.t
k=0
while [ "$k" -lt "$runs" ]; do
    k=$((k + 1))
    t0=$(up); inspect --range 0-1000 >/dev/null 2>&1 || fail "vmm inspect of one page failed"; secs "$t0" "$(up)" >>/tmp/vbase.t
    t0=$(up); inspect >/tmp/vmm.tlb 2>/tmp/vmm.err || { cat /tmp/vmm.err; fail "vmm inspect failed"; }; secs "$t0" "$(up)" >>/tmp/vmm.t
    # vmm's own time for the walk and its listing ("... in 12.34ms"), in seconds.
    awk '{ t = $NF } END { if (t ~ /µs$/) m = 1e-6; else if (t ~ /ms$/) m = 1e-3; else if (t ~ /ns$/) m = 1e-9; else m = 1;
        sub(/[^0-9.]+$/, "", t); printf "%.6f\n", t * m }' /tmp/vmm.err >>/tmp/vself.t
done
q=$(min </tmp/qemu.t); qb=$(min </tmp/base.t); v=$(min </tmp/vmm.t); vb=$(min </tmp/vbase.t); vs=$(min </tmp/vself.t)
qn=$(wc -l </tmp/qemu.tlb); vn=$(grep -cE '^[0-9a-f]{16}: ' /tmp/vmm.tlb || true)
echo "tlb-bench: QEMU info tlb: fastest of $runs ${q} s, monitor round trip ${qb} s, $qn leaves"
echo "tlb-bench: vmm inspect --format tlb: fastest of $runs ${v} s, start-up (one empty page) ${vb} s, walk and listing by its own clock ${vs} s, $vn leaves"
awk -v q="$q" -v qb="$qb" -v v="$v" -v vb="$vb" -v vs="$vs" 'BEGIN {
    qw = q - qb; if (qw < 0) qw = 0
    printf "tlb-bench: walk and listing: QEMU info tlb %.4f s (less the monitor round trip), vmm %.4f s; vmm / QEMU = %s; whole commands (vmm inspect incl. start-up and mapping the file / info tlb incl. round trip) = %.2f\n",
        qw, vs, (qw > 0 ? sprintf("%.3f", vs / qw) : "n/a"), (q > 0 ? v / q : 0) }'
# Same lines: VA, PA and all nine flags.
norm() { grep -E '^[0-9a-f]{16}: [0-9a-f]{16} ' "$1" | sort; }
norm /tmp/qemu.tlb >/tmp/q.n; norm /tmp/vmm.tlb >/tmp/v.n
# Set operations without comm (busybox lacks it); neither listing repeats a leaf.
sort /tmp/q.n /tmp/v.n | uniq -d >/tmp/both.n
sort /tmp/q.n /tmp/both.n | uniq -u >/tmp/oq.n
sort /tmp/v.n /tmp/both.n | uniq -u >/tmp/ov.n
both=$(wc -l </tmp/both.n); oq=$(wc -l </tmp/oq.n); ov=$(wc -l </tmp/ov.n)
echo "tlb-bench: leaves in both listings $both, only in QEMU's $oq, only in vmm's $ov"
head -n 5 /tmp/oq.n | sed 's/^/tlb-bench: only QEMU: /'
head -n 5 /tmp/ov.n | sed 's/^/tlb-bench: only vmm: /'
# The THP process's CR3 (not another process's): its buffer is there, as 2 MiB leaves
# (QEMU's P column is the PS bit; both listings hold the same VA/PA pairs, checked above).
buf=$(grep -o 'GUESTWALK-THP buffer=0x[0-9a-f]*' /tmp/serial | cut -d= -f2)
lo=$(printf '%016x' "$((buf))"); hi=$(printf '%016x' "$((buf + (64 << 20)))")
# Zero-padded hex of one width compares as strings.
thp=$(awk -v lo="$lo" -v hi="$hi" '{ va = substr($1, 1, 16) } va >= lo && va < hi && substr($3, 3, 1) == "P" { n++ }
    END { print n + 0 }' /tmp/qemu.tlb)
echo "tlb-bench: the THP buffer at $buf: $thp 2 MiB leaves (32 expected)"
[ "$both" -gt 0 ] && [ "$oq" = 0 ] && [ "$ov" = 0 ] && [ "$thp" = 32 ]
INNER
HWKVM_EXTRA_ROOT=$extra exec "$here/run.sh" "tlb-bench::sh /hwkvm/tlb-bench-inner.sh $runs"
