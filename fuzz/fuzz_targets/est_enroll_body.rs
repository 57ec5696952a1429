//! EST enrollment bodies (RFC 7030 §4.2.1): base64 with line breaks → DER CSR → verified CSR →
//! the names EST reads (serialNumber) and compares on re-enrollment.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    medid_fuzz_est(data);
});

fn medid_fuzz_est(data: &[u8]) {
    let Ok(der) = medid::api::est::decode_base64_body(data) else {
        return;
    };
    if let Ok(csr) = medid::policy::csr::verify(&der) {
        let _ = csr.names.serial_number();
        let _ = medid::policy::est::check_reenrollment(&csr.names, &Default::default());
    }
}
