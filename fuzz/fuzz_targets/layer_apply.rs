#![no_main]

#[path = "../checks/layer_apply.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check::check(data);
});
