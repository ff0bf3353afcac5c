#![no_main]

#[path = "../checks/snapshot_manifest.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check::check(data);
});
