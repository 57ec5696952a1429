//! What ships beside the binary: the systemd unit passes `systemd-analyze verify` (its
//! `Documentation=man:medid(1)` resolved against the man pages `medid man` writes) and scores
//! as confined by `systemd-analyze security`; the example configuration loads. Where
//! systemd-analyze is missing the unit checks are skipped, unless
//! `MEDID_REQUIRE_SYSTEMD_ANALYZE` is set (`.ci/run` sets it).

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../deploy/medid.service");

fn systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var_os("MEDID_REQUIRE_SYSTEMD_ANALYZE").is_none(),
        "MEDID_REQUIRE_SYSTEMD_ANALYZE is set but systemd-analyze is not installed"
    );
    if !found {
        eprintln!("systemd-analyze not installed: the unit is not verified (.ci/run installs it)");
    }
    found
}

/// The unit as installed, but starting the binary under test, in `dir`.
fn unit_in(dir: &Path) -> std::path::PathBuf {
    let unit = UNIT.replace("/usr/local/bin/medid", env!("CARGO_BIN_EXE_medid"));
    assert_ne!(unit, UNIT, "the unit starts /usr/local/bin/medid");
    let path = dir.join("medid.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_unit_confines_the_service_as_the_deployment_guide_says() {
    for line in [
        "User=medid",
        "StateDirectory=medid",
        "StateDirectoryMode=0700",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "LimitNOFILE=65536",
        "KillSignal=SIGTERM",
        "SuccessExitStatus=3",
        "UMask=0077",
    ] {
        assert!(UNIT.contains(line), "the unit lacks {line:?}");
    }
    if !systemd_analyze() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_in(dir.path());
    let man = dir.path().join("man");
    let wrote = Command::new(env!("CARGO_BIN_EXE_medid"))
        .arg("man")
        .arg("--out")
        .arg(man.join("man1"))
        .output()
        .unwrap();
    assert!(wrote.status.success());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout).into_owned()
        + &String::from_utf8_lossy(&security.stderr);
    let level: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .and_then(|(_, score)| score.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    // systemd's scale: 0 (safe) to 10 (exposed); below 2 it says "OK".
    assert!(level < 2.0, "exposure {level}:\n{report}");
}

#[test]
fn the_example_configuration_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/medid.toml");
    let config =
        medid::config::Config::from_file(Path::new(path)).expect("deploy/medid.toml loads");
    config.validate().expect("and is valid");
    assert_eq!(config.log_format, medid::logging::LogFormat::Json);
    assert!(
        !config.create_dev_pki,
        "a production configuration never makes a development PKI"
    );
}
