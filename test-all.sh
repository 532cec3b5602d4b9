#!/usr/bin/env bash
# Every test of the project, as CI runs it:
#  1. the workspace's tests against this machine's /dev/kvm (PVM on the project's machines);
#  2. the same suite again inside an emulated hardware-style KVM host (guest-images/hwkvm:
#     QEMU TCG with SVM and nested paging, Debian's stock kernel, kvm-amd nested=1), where
#     1 GiB pages are live. It needs root (apt-get for QEMU and Debian's kernel package).
# Tests that need /dev/kvm fail rather than skip when GUESTWALK_REQUIRE_KVM=1.
set -euo pipefail
cd "$(dirname "$0")"

if [ -e /dev/kvm ]; then
    export GUESTWALK_REQUIRE_KVM=1
fi
echo "test-all: GUESTWALK_REQUIRE_KVM=${GUESTWALK_REQUIRE_KVM:-unset}"

cargo test --workspace --locked

guest-images/hwkvm/build.sh
HWKVM_QUIET=1 guest-images/hwkvm/run.sh
