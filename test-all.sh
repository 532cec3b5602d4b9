#!/usr/bin/env bash
# Every test of the project, as CI runs it:
#  1. the workspace's tests against this machine's /dev/kvm (PVM on the project's machines);
#  2. the same suite again inside an emulated hardware-style KVM host (guest-images/hwkvm:
#     QEMU TCG with SVM and nested paging, Debian's stock kernel, kvm-amd nested=1), where
#     1 GiB pages and LA57 are live, with the Linux tests (tests/tests/linux.rs: Debian's
#     cloud kernel under vmm, built by guest-images/linux/build.sh). It needs root
#     (apt-get for QEMU and Debian's packages).
#  Between the two: QEMU-made dumps of the Linux guest walked by `vmm inspect --dump`.
# Tests that need /dev/kvm fail rather than skip when GUESTWALK_REQUIRE_KVM=1.
set -euo pipefail
cd "$(dirname "$0")"

if [ -e /dev/kvm ]; then
    export GUESTWALK_REQUIRE_KVM=1
fi
echo "test-all: GUESTWALK_REQUIRE_KVM=${GUESTWALK_REQUIRE_KVM:-unset}"
# Disk is the first suspect when a stage dies oddly: say what there was.
echo "test-all: disk free at the start: $(df -h . | awk 'NR == 2 { print $4 " of " $2 }')"

cargo test --workspace --locked

# The emulated host is required: a failure fails the run (HWKVM_REQUIRED=0 only reports it,
# for a developer without root). run-ci.sh runs what did not pass again in a fresh host, up
# to three boots, because the emulator itself has failed on its own, and says so loudly
# when it did (guest-images/hwkvm/README.md). The stage is bounded: a normal run takes
# about 8 minutes; a locked-up emulated host is stopped after 5 silent minutes.
# QEMU's own dumps of the Linux test guest (ELF, kdump-zlib; 4- and 5-level paging, made
# by QEMU TCG on this machine, about 30 s): `vmm inspect --dump` must print exactly QEMU's
# `info tlb` (tests/tests/dumps.rs). Needs the same Linux guest and QEMU as the stage below.
# One level at a time, its RAM-sized files deleted before the next: CI machines can be
# short of disk (make.sh checks and says so).
dumps() {
    local level
    guest-images/linux/build.sh >/dev/null && guest-images/hwkvm/build.sh || return 1
    for level in 4 5; do
        guest-images/qemu-dumps/make.sh guest-images/out/qemu-dumps "$level" &&
            GUESTWALK_QEMU_DUMPS="$PWD/guest-images/out/qemu-dumps" GUESTWALK_REQUIRE_QEMU_DUMPS=1 \
                GUESTWALK_QEMU_DUMP_LEVELS="$level" cargo test -p guestwalk-tests --test dumps --locked
        local status=$?
        rm -f guest-images/out/qemu-dumps/"$level"/mem.raw guest-images/out/qemu-dumps/"$level"/core.elf
        [ "$status" = 0 ] || return 1
    done
}
dumps_ok=0
if dumps; then
    dumps_ok=1
    echo "test-all: QEMU-made dumps: vmm inspect --dump equals QEMU's info tlb"
elif [ "${HWKVM_REQUIRED:-1}" != 0 ]; then
    echo "test-all: QEMU-made dumps: FAILED" >&2
    exit 1
fi
echo "test-all: QEMU-made dumps stage passed=$dumps_ok"

if guest-images/linux/build.sh >/dev/null &&
    guest-images/hwkvm/build.sh &&
    HWKVM_QUIET=1 HWKVM_TIMEOUT="${HWKVM_TIMEOUT:-1200}" HWKVM_CMD_TIMEOUT="${HWKVM_CMD_TIMEOUT:-600}" \
        guest-images/hwkvm/run-ci.sh; then
    echo "test-all: emulated hardware-KVM host: every command passed"
elif [ "${HWKVM_REQUIRED:-1}" = 0 ]; then
    echo "test-all: emulated hardware-KVM host: FAILED (HWKVM_REQUIRED=0: reported, not failing" \
        "the run; serial log in guest-images/out/hwkvm/serial.log)" >&2
else
    echo "test-all: emulated hardware-KVM host: FAILED (serial logs in guest-images/out/hwkvm/)" >&2
    exit 1
fi
