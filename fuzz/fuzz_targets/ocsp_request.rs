//! OCSP request parsing (RFC 6960), as the HTTP listener runs it on untrusted bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = medid::api::http::parse_ocsp_request(data);
});
