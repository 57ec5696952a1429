//! The strict DER walker that guards CSR intake.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = medid::der::check_strict(data, 16);
});
