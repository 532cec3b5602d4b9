//! The rule for tests that need `/dev/kvm`, shared by every integration test in the
//! workspace: they fail, not skip, when `GUESTWALK_REQUIRE_KVM=1`.

/// Whether KVM is required: when `GUESTWALK_REQUIRE_KVM=1`, a test that cannot open
/// `/dev/kvm` fails instead of skipping.
pub fn kvm_required() -> bool {
    std::env::var("GUESTWALK_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

/// Returns `true` when `/dev/kvm` can be opened. Without it, a test skips with a printed
/// reason, or panics when [`kvm_required`] says KVM must be there.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            assert!(
                !kvm_required(),
                "{test}: GUESTWALK_REQUIRE_KVM=1 but /dev/kvm cannot be opened: {e}"
            );
            eprintln!("{test}: skipped: /dev/kvm cannot be opened ({e})");
            false
        }
    }
}
