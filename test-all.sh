#!/usr/bin/env bash
# Every test of the project, as CI runs it:
#  1. the workspace's tests against this machine's /dev/kvm (PVM on the project's machines);
#  2. the same suite again inside an emulated hardware-style KVM host (guest-images/hwkvm:
#     QEMU TCG with SVM and nested paging, Debian's stock kernel, kvm-amd nested=1), where
#     1 GiB pages and LA57 are live, with the Linux tests (tests/tests/linux.rs: Debian's
#     cloud kernel under vmm, built by guest-images/linux/build.sh). It needs root
#     (apt-get for QEMU and Debian's packages).
# Tests that need /dev/kvm fail rather than skip when GUESTWALK_REQUIRE_KVM=1.
set -euo pipefail
cd "$(dirname "$0")"

if [ -e /dev/kvm ]; then
    export GUESTWALK_REQUIRE_KVM=1
fi
echo "test-all: GUESTWALK_REQUIRE_KVM=${GUESTWALK_REQUIRE_KVM:-unset}"

cargo test --workspace --locked

# The emulated host is quarantined: its result is reported, but a failure does not fail
# the run unless HWKVM_REQUIRED=1. It is not yet stable (a guest triple fault, a host
# lockup and a hang in 3 of 5 runs, not yet understood); until it is, a flaky emulator
# stage must not hide the verdict of the suite above. See guest-images/hwkvm/README.md.
# The stage is bounded: a normal run takes about 4 minutes, but the emulated host has been
# seen to lock up (soft lockups under TCG), and a hang must not eat CI's 90 minutes.
if guest-images/linux/build.sh >/dev/null &&
    guest-images/hwkvm/build.sh &&
    HWKVM_QUIET=1 HWKVM_TIMEOUT="${HWKVM_TIMEOUT:-1200}" HWKVM_CMD_TIMEOUT="${HWKVM_CMD_TIMEOUT:-600}" \
        guest-images/hwkvm/run.sh; then
    echo "test-all: emulated hardware-KVM host: every command passed"
elif [ "${HWKVM_REQUIRED:-0}" = 1 ]; then
    echo "test-all: emulated hardware-KVM host: FAILED" >&2
    exit 1
else
    echo "test-all: emulated hardware-KVM host: FAILED (quarantined, not failing the run;" \
        "serial log in guest-images/out/hwkvm/serial.log)" >&2
fi
