#!/usr/bin/env bash
# The emulated-host stage of test-all.sh: run.sh's default command list, with one second
# chance for what failed.
#
# The emulator (QEMU TCG emulating SVM and nested paging, under which a stock kernel runs
# KVM) has failed on its own a few times in about forty full runs: once the emulated
# host's kernel oopsed inside a KVM ioctl, once it locked up, once a guest triple-faulted in
# a test that passed in every other run. So a command that fails (or never ran because the
# host died) is run once more, alone, in a freshly booted host. A command passes only if
# one of its two runs passed; one that fails twice fails the stage. Nothing is hidden: each
# failure of a first run is printed with the reason the summary found, the first run's
# serial log is kept as serial.first.log, and the stage's last line says how many commands
# needed their second run.
#
#   run-ci.sh      (after build.sh; environment as for run.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${HWKVM_OUT:-$repo/guest-images/out/hwkvm}
list=$out/default-commands.tsv
[ -s "$list" ] || { echo "hwkvm-ci: $list is missing: run build.sh first" >&2; exit 1; }

if "$here/run.sh"; then
    echo "hwkvm-ci: every command passed on its first run"
    exit 0
fi
cp "$out/serial.log" "$out/serial.first.log"
cp "$out/timings-run.txt" "$out/timings-run.first.txt"

# The commands that did not pass: every name of the list without an "ok" summary line
# (failed, hung, or never started because the host died first).
retry=()
while IFS=$'\t' read -r name command; do
    [ -n "$name" ] || continue
    if ! grep -qE "^ok +${name//./\\.} " "$out/timings-run.first.txt"; then
        retry+=("$name::$command")
        echo "hwkvm-ci: first run: $name did not pass" >&2
    fi
done <"$list"
# The reasons the summary found (panic lines, host failures), for the record.
grep -E '^(FAIL|----|    |host kernel:)' "$out/timings-run.first.txt" | sed 's/^/hwkvm-ci: first run: /' >&2 || true
if [ "${#retry[@]}" -eq 0 ]; then
    # Every command passed, yet the run failed: the host itself did not boot or finish.
    echo "hwkvm-ci: every command passed, but the host did not finish cleanly; booting it again" >&2
    "$here/run.sh" && { echo "hwkvm-ci: PASS on the second boot (the first host did not finish)"; exit 0; }
    exit 1
fi

echo "hwkvm-ci: second run of ${#retry[@]} command(s) in a fresh host" >&2
if "$here/run.sh" "${retry[@]}"; then
    echo "hwkvm-ci: PASS, ${#retry[@]} command(s) needed a second run (first run's log: $out/serial.first.log)"
    exit 0
fi
echo "hwkvm-ci: FAIL: command(s) failed twice (logs: $out/serial.first.log, $out/serial.log)" >&2
exit 1
