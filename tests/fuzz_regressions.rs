//! Replays every input kept from fuzzing (`tests/data/fuzz-regressions/<target>/`) through the
//! same entry points the fuzz targets drive, so a crash found once stays fixed. The CSR fixtures
//! are replayed too, as seeds.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz-regressions")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.path().display().to_string(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn kept_fuzz_inputs_no_longer_crash() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut csrs = inputs("csr_intake");
    for entry in std::fs::read_dir(&data).unwrap().filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "csr") {
            csrs.push((
                entry.path().display().to_string(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    assert!(!csrs.is_empty());
    for (_, bytes) in &csrs {
        if let Ok(der) = medid::pem::csr_der(bytes) {
            let _ = medid::policy::csr::verify(&der);
        }
        let _ = medid::der::check_strict(bytes, 16);
    }
    for (_, bytes) in inputs("ocsp_request") {
        let _ = medid::api::http::parse_ocsp_request(&bytes);
    }
    for (_, bytes) in inputs("est_enroll_body") {
        if let Ok(der) = medid::api::est::decode_base64_body(&bytes) {
            if let Ok(csr) = medid::policy::csr::verify(&der) {
                let _ = medid::policy::est::check_reenrollment(&csr.names, &Default::default());
            }
        }
    }
    for (_, bytes) in inputs("der_strict") {
        let _ = medid::der::check_strict(&bytes, 16);
    }
    for (_, bytes) in inputs("audit_bundle") {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = medid::audit::verify::verify_bundle(text, &[7u8; 32], None);
        }
    }
}
