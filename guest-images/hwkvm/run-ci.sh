#!/usr/bin/env bash
# The emulated-host stage of test-all.sh: run.sh's default command list, with up to two
# more chances for what failed.
#
# The emulator (QEMU TCG emulating SVM and nested paging, under which a stock kernel runs
# KVM) has failed on its own: the emulated host's kernel oopsed inside a KVM ioctl, locked
# up, and guests triple-faulted at random points of tests that pass in every other run. With
# QEMU 7.2 most of these were TCG's non-atomic page-table updates (build.sh now requires
# QEMU 8.0 or newer); the retries stay for what else the emulator may do. So what did not
# pass is run again in a freshly booted host, and only what did not pass: the failed tests
# of a test executable (retry.py), or what had not run yet when the host died. A command
# passes once one of its runs passed; what fails in every run (HWKVM_RUNS boots, default 3)
# fails the stage. Nothing is hidden: each failure is printed with the reason the summary
# found, every run's serial log is kept (serial.run-N.log), and the stage's last line says
# how many boots it needed.
#
#   run-ci.sh      (after build.sh; environment as for run.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${HWKVM_OUT:-$repo/guest-images/out/hwkvm}
list=$out/default-commands.tsv
runs=${HWKVM_RUNS:-3}
[ -s "$list" ] || { echo "hwkvm-ci: $list is missing: run build.sh first" >&2; exit 1; }

rm -f "$out"/serial.run-*.log "$out"/timings-run.run-*.txt
logs=()
retry=()
for ((run = 1; run <= runs; run++)); do
    if [ "$run" -gt 1 ]; then
        echo "hwkvm-ci: run $run of $runs, in a fresh host: ${#retry[@]} command(s)" >&2
    fi
    # The first run takes the default list; later ones what retry.py says is left.
    if "$here/run.sh" "${retry[@]}"; then
        if [ "$run" = 1 ]; then
            echo "hwkvm-ci: every command passed on its first run"
        else
            echo "hwkvm-ci: PASS on run $run of $runs (earlier runs' logs: $out/serial.run-*.log)"
        fi
        exit 0
    fi
    cp "$out/serial.log" "$out/serial.run-$run.log"
    cp "$out/serial.ts.log" "$out/serial.ts.run-$run.log"
    cp "$out/timings-run.txt" "$out/timings-run.run-$run.txt"
    logs+=("$out/serial.ts.run-$run.log")
    # The reasons the summary found (panic lines, host failures), for the record.
    grep -E '^(FAIL|----|    |host kernel:)' "$out/timings-run.txt" | sed "s/^/hwkvm-ci: run $run: /" >&2 || true
    mapfile -t retry < <(python3 "$here/retry.py" "$list" "${logs[@]}")
    if [ "${#retry[@]}" -eq 0 ]; then
        # Every command passed, yet the run failed: the host itself did not boot or finish.
        echo "hwkvm-ci: run $run: every command passed, but the host did not finish cleanly" >&2
        [ "$run" -lt "$runs" ] || exit 1
        continue
    fi
    for entry in "${retry[@]}"; do
        echo "hwkvm-ci: run $run: not passed yet: ${entry%%::*}: ${entry#*::}" >&2
    done
done
echo "hwkvm-ci: FAIL: command(s) failed in all $runs runs (logs: $out/serial.run-*.log)" >&2
exit 1
