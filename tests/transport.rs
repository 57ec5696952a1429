//! Transport limits: TLS versions, message size, idle connections.

mod common;

use std::process::{Command, Stdio};

use common::{csr_p256, TestServer};
use medid::proto::EnrollDeviceRequest;
use tonic::Code;

fn s_client(server: &TestServer, version_flag: &str) -> (bool, String) {
    s_client_with(server, &[version_flag])
}

fn s_client_with(server: &TestServer, flags: &[&str]) -> (bool, String) {
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(flags)
        .args(["-servername", "localhost"])
        .arg("-CAfile")
        .arg(server.pki("root-ca.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The handshake summary ("New, TLSv1.3, Cipher is …", or "New, (NONE), Cipher is (NONE)"
    // when refused) is printed whatever the timing of session tickets.
    let negotiated = text.contains("New, TLSv1") && !text.contains("Cipher is (NONE)");
    (negotiated, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_are_refused_and_1_2_and_1_3_accepted() {
    let server = TestServer::start().await;
    for flag in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(&server, flag);
        assert!(!ok, "{flag} was negotiated:\n{text}");
    }
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(&server, flag);
        assert!(ok && text.contains(name), "{flag} was refused:\n{text}");
    }
}

/// The server picks AES-128-GCM/SHA-256 first whatever the client prefers (cheaper handshakes
/// where SHA-384 has no instructions of its own), and still accepts AES-256-GCM/SHA-384 alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_3_prefers_aes_128_gcm_and_accepts_aes_256_gcm() {
    let server = TestServer::start().await;
    let (ok, text) = s_client_with(
        &server,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        ],
    );
    assert!(
        ok && text.contains("Cipher is TLS_AES_128_GCM_SHA256"),
        "{text}"
    );
    let (ok, text) = s_client_with(
        &server,
        &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
    );
    assert!(
        ok && text.contains("Cipher is TLS_AES_256_GCM_SHA384"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_before_parsing() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let err = server
        .enrollment_client(&station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr: vec![0x30; 2 * 1024 * 1024],
            serial: "BIG".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("message length too large")
            || err.message().contains("larger than max"),
        "{}",
        err.message()
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM devices").await, 0);
}

/// 2,000 TCP connections that never start a TLS handshake do not keep a real client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_enrolls_while_two_thousand_idle_connections_are_open() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    // From another address than the client's: one source may hold only its share.
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(
            socket
                .connect(([127, 0, 0, 1], port).into())
                .await
                .expect("connect"),
        );
    }
    let resp = server
        .enrollment_client(&station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr: csr_p256().0,
            serial: "UNDER-LOAD".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .expect("enrollment succeeds with 2,000 idle connections open");
    assert!(resp.into_inner().device.is_some());
    drop(idle);
}

/// At shutdown `/readyz` answers 503, the gRPC listener closes and in-flight calls get
/// `shutdown_drain_seconds`; a stream that never finishes (a gateway's RecordAccessStream
/// sending nothing) is closed then, and shutdown completes, reporting that the deadline cut it
/// short. The 20 s bound is this test's liveness limit, not a performance figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_does_not_hold_shutdown_past_the_drain_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_with(dir, common::system_now(), |c| {
        c.shutdown_drain_seconds = 3;
    })
    .await;
    let gateway = server
        .issue(medid::proto::PrincipalRole::Gateway, "gw-idle", "")
        .await;
    let mut audit =
        medid::proto::audit_service_client::AuditServiceClient::new(server.channel(&gateway).await);
    let (keep_open, batches) = tokio::sync::mpsc::channel::<medid::proto::AccessBatch>(1);
    let stream = tokio::spawn(async move {
        let mut acks = audit
            .record_access_stream(tokio_stream::wrappers::ReceiverStream::new(batches))
            .await?
            .into_inner();
        acks.message().await.map(|_| ())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!stream.is_finished(), "the stream is open and idle");
    assert_eq!(server.readiness().await, 200);
    server.begin_stop();
    let mut readiness = 200;
    for _ in 0..100 {
        readiness = server.readiness().await;
        if readiness == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(readiness, 503, "a draining node says it is not ready");
    let grpc_port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    // The listener closes in the accept task, a moment after readiness flips.
    let mut accepting = true;
    for _ in 0..200 {
        accepting = std::net::TcpStream::connect(("127.0.0.1", grpc_port)).is_ok();
        if !accepting {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!accepting, "the gRPC listener no longer accepts");
    let (stopped, _) =
        tokio::time::timeout(std::time::Duration::from_secs(20), server.stop_reporting())
            .await
            .expect("shutdown completes once the drain deadline has passed");
    assert_eq!(stopped, medid::server::Stopped::CutShort);
    drop(keep_open);
    let _ = stream.await;
}

#[tokio::test]
async fn a_shutdown_with_nothing_in_flight_reports_a_complete_drain() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let (stopped, _) = server.stop_reporting().await;
    assert_eq!(stopped, medid::server::Stopped::Drained);
}
