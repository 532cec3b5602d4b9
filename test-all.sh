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

# The emulated host is required: a failure fails the run (HWKVM_REQUIRED=0 only reports it,
# for a developer without root). run-ci.sh gives a command that failed one more run in a
# fresh host, because the emulator itself has failed a few times in about forty runs, and
# says so loudly when it did (guest-images/hwkvm/README.md). The stage is bounded: a
# normal run takes about 5 minutes; a locked-up emulated host must not eat CI's 90.
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
