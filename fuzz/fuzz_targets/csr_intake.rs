//! CSR intake as the API runs it: PEM-or-DER unwrapping, then parse, key check, signature.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(der) = medid::pem::csr_der(data) {
        let _ = medid::policy::csr::verify(&der);
    }
});
