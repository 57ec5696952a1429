//! The offline audit bundle verifier, fed arbitrary text (and a fixed key).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = medid::audit::verify::verify_bundle(text, &[7u8; 32], None);
        let _ = medid::audit::verify::verify_bundle(text, &[7u8; 32], Some(text));
    }
});
