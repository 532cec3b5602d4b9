#!/usr/bin/env bash
# Real dumps made by QEMU itself, for tests/tests/dumps.rs (issue: inspect reads the
# dumps users already have).
#
# QEMU's software emulator (TCG, no KVM needed; the pc machine: microvm has no timer to
# calibrate the TSC against under TCG) boots the Linux test guest of
# guest-images/linux/ (Debian's cloud kernel, busybox, the THP process) with 512 MiB of RAM
# (QEMU_DUMPS_RAM_MIB), in 4-level paging (-cpu max,la57=off) and in 5-level (-cpu max: the
# kernel turns LA57 on). When the THP process has written its buffer and lingers (its CR3 is
# loaded on the only vCPU), the monitor stops the guest and writes, for that instant:
#   qemu.tlb       `info tlb`'s leaves (the reference)
#   core.elf       dump-guest-memory (ELF, with QEMU's per-CPU notes)
#   zlib.kdump     dump-guest-memory -z (kdump-compressed, flattened, zlib)
#   lzo.kdump      -l (LZO), snappy.kdump -s (Snappy), when this QEMU was built with them
#   mem.raw        pmemsave of all RAM (byte N = GPA N, for `vmm inspect --memory`)
#   registers.txt  CR3, CR4 and EFER from `info registers`
#   serial.log     the guest's console
# into OUT/4 and OUT/5. Nothing is committed: the test makes them in CI (test-all.sh), one
# level at a time, and deletes the large files before the next, so that the stage needs
# about 1.2 GiB of disk at once (it checks first and says so when there is less).
#
#   guest-images/qemu-dumps/make.sh OUT [LEVELS...]   (LEVELS: 4, 5; both by default;
#                                                     after guest-images/linux/build.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: make.sh OUT [LEVELS...]}
shift
levels=("$@")
[ ${#levels[@]} -gt 0 ] || levels=(4 5)
ram_mib=${QEMU_DUMPS_RAM_MIB:-512}
case $ram_mib in
    '' | *[!0-9]*) echo "make.sh: QEMU_DUMPS_RAM_MIB=$ram_mib is not a number of MiB" >&2; exit 1 ;;
esac
linux=${GUESTWALK_LINUX_DIR:-$here/../out/linux}
qemu=$(command -v qemu-system-x86_64) || { echo "make.sh: qemu-system-x86_64 is missing (apt-get install qemu-system-x86)" >&2; exit 1; }
for f in bzImage initramfs.cpio.gz; do
    [ -s "$linux/$f" ] || { echo "make.sh: $linux/$f is missing (run guest-images/linux/build.sh)" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

fail() { echo "qemu-dumps: $*" >&2; exit 1; }

# Each level writes RAM twice (the ELF core and mem.raw) and the compressed dumps.
need_mib=$((2 * ram_mib + 128))
free_mib=$(df -Pm "$out" | awk 'NR == 2 { print $4 }')
[ "${free_mib:-0}" -ge "$need_mib" ] ||
    fail "$out has ${free_mib:-?} MiB free; one level of dumps needs $need_mib MiB (df -h: $(df -h "$out" | awk 'NR == 2 { print $4 " free of " $2 }'))"

one() {
    local levels=$1 cpu=$2 dir=$out/$1 work
    work=$(mktemp -d)
    rm -rf "$dir"; mkdir -p "$dir"
    mkfifo "$work/mon"
    # The monitor reads commands from the FIFO and writes to mon.out; it runs in $dir,
    # because pmemsave takes a relative name (HMP reads "/" in its arguments as division).
    (cd "$dir" && exec "$qemu" -M pc -accel tcg -cpu "$cpu" -m "${ram_mib}M" -smp 1 \
        -nodefaults -no-user-config -display none -serial "file:$dir/serial.log" -monitor stdio \
        -kernel "$linux/bzImage" -initrd "$linux/initramfs.cpio.gz" \
        -append "console=ttyS0 quiet panic=-1 nokaslr guestwalk.linger=3600" \
        <"$work/mon" >"$work/mon.out" 2>&1) &
    local pid=$!
    exec 3>"$work/mon"
    local i=0
    until grep -q "GUESTWALK-THP lingering" "$dir/serial.log" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 1500 ] || ! kill -0 "$pid" 2>/dev/null; then
            cat "$dir/serial.log" >&2 || true
            kill "$pid" 2>/dev/null || true
            fail "$levels-level: the guest's THP process never lingered"
        fi
        sleep 0.2
    done
    # Sends a monitor command and waits for its answer (an `info version` after it).
    mon() {
        local n
        n=$(grep -c '^[0-9]*\.[0-9]*\.[0-9]' "$work/mon.out" || true)
        printf '%s\ninfo version\n' "$1" >&3
        local j=0
        until [ "$(grep -c '^[0-9]*\.[0-9]*\.[0-9]' "$work/mon.out" || true)" -gt "$n" ]; do
            j=$((j + 1)); [ "$j" -lt 3000 ] || fail "$levels-level: the monitor did not answer '$1'"
            sleep 0.1
        done
    }
    mon stop
    mon "info registers"
    # How long `info tlb` takes (the fastest of 3), less a trivial command's round trip:
    # the baseline of the dump benchmarks (README, "Benchmarks").
    local start t0 best=999 base=999 k
    for k in 1 2 3; do
        t0=$(date +%s.%N); mon "info status"; base=$(echo "$t0 $(date +%s.%N) $base" | awk '{ d = $2 - $1; print (d < $3 ? d : $3) }')
        start=$(wc -l <"$work/mon.out")
        t0=$(date +%s.%N); mon "info tlb"; best=$(echo "$t0 $(date +%s.%N) $best" | awk '{ d = $2 - $1; print (d < $3 ? d : $3) }')
    done
    echo "$best $base" >"$dir/info-tlb.seconds"
    tail -n +"$((start + 1))" "$work/mon.out" | tr -d '\r' | grep -E '^[0-9a-f]{16}: [0-9a-f]{16} ' >"$dir/qemu.tlb" || true
    [ -s "$dir/qemu.tlb" ] || fail "$levels-level: info tlb printed nothing"
    tr -d '\r' <"$work/mon.out" | grep -oE '(CR3|CR4|EFER)=[0-9a-f]+' | tail -n 3 >"$dir/registers.txt" || true
    mon "dump-guest-memory $dir/core.elf"
    mon "dump-guest-memory -z $dir/zlib.kdump"
    mon "dump-guest-memory -l $dir/lzo.kdump"
    mon "dump-guest-memory -s $dir/snappy.kdump"
    mon "pmemsave 0 $(printf '0x%x' $((ram_mib << 20))) mem.raw"
    printf 'quit\n' >&3
    exec 3>&-
    wait "$pid" || true
    grep -i "error\|unsupported\|not supported" "$work/mon.out" | sed "s/^/qemu-dumps: $levels-level monitor: /" >&2 || true
    rm -rf "$work"
    [ -s "$dir/core.elf" ] || fail "$levels-level: dump-guest-memory wrote no ELF core"
    [ -s "$dir/zlib.kdump" ] || fail "$levels-level: dump-guest-memory -z wrote no kdump file"
    [ "$(stat -c %s "$dir/mem.raw" 2>/dev/null || echo 0)" = $((ram_mib << 20)) ] ||
        fail "$levels-level: pmemsave did not write all $ram_mib MiB to mem.raw (disk full?)"
    echo "qemu-dumps: $levels-level: $(wc -l <"$dir/qemu.tlb") leaves in info tlb; $(cd "$dir" && ls -s --block-size=M ./*.elf ./*.kdump 2>/dev/null | tr '\n' ' ')"
}

for level in "${levels[@]}"; do
    case $level in
        4) one 4 max,la57=off ;;
        5) one 5 max ;;
        *) fail "level $level: 4 or 5" ;;
    esac
done
