//! `wss://` with a certificate generated in the test: trusted through the CA file option, refused without it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;
use uplink_tests::{TestGateway, within};
use uplink_tokio::{LinkState, LossReason, Uplink, UplinkConfig};

fn acceptor() -> (TlsAcceptor, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), ck.cert.pem())
}

fn config(port: u16) -> UplinkConfig {
    let mut c = UplinkConfig::new(format!("wss://localhost:{port}/api/sled-uplink"), "tls-proj");
    c.token = Some("tls-token".into());
    c.sled.backoff_initial = Duration::from_millis(20);
    c.sled.backoff_max = Duration::from_millis(100);
    c
}

#[tokio::test]
async fn wss_is_trusted_through_the_ca_file() {
    let (acceptor, pem) = acceptor();
    let dir = uplink_tests::temp_dir();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let gw = TestGateway::bind().await;
    let mut c = config(gw.addr.port());
    c.ca_file = Some(ca.clone());
    let uplink = Uplink::start(c).unwrap();
    let mut conn = gw.accept_tls(&acceptor).await;
    assert_eq!(conn.authorization.as_deref(), Some("Bearer tls-token"));
    assert_eq!(conn.recv().await["type"], "identity");
    let (code, ()) = tokio::join!(conn.until_closed(), uplink.shutdown());
    assert_eq!(code, Some(1000));
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_failure_not_a_panic() {
    let (acceptor, _) = acceptor();
    let gw = TestGateway::bind().await;
    let uplink = Uplink::start(config(gw.addr.port())).unwrap();
    // The sled's TLS handshake with the test gateway fails on the unknown certificate.
    let server_side = gw.try_accept_tls(&acceptor).await;
    assert!(server_side.is_err(), "the client must abort the handshake");
    let mut rx = uplink.watch_link();
    let state = within("a back-off", async {
        loop {
            let s = rx.borrow_and_update().clone();
            if matches!(s, LinkState::BackingOff { .. }) {
                return s;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    assert!(matches!(state, LinkState::BackingOff { reason: LossReason::ConnectFailed, .. }), "{state:?}");
    uplink.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_start_error() {
    let dir = uplink_tests::temp_dir();
    let mut c = config(1);
    c.ca_file = Some(dir.path().join("no-such-ca.pem"));
    assert!(matches!(
        Uplink::start(c),
        Err(uplink_tokio::StartError::CaFile { .. } | uplink_tokio::StartError::NoCaCertificate(_))
    ));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let mut c = config(1);
    c.ca_file = Some(empty.clone());
    let err = Uplink::start(c).unwrap_err();
    assert!(err.to_string().contains("no certificate found"), "{err}");
}

#[tokio::test]
async fn the_gateway_serves_wss_and_https_from_certificate_files() {
    use uplink_tokio::gateway::{GatewayServer, GatewayServerConfig};
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = uplink_tests::temp_dir();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut config = GatewayServerConfig::new("127.0.0.1:0".parse().unwrap(), vec!["s".into()], "a");
    config.tls = Some((cert.clone(), key.clone()));
    let server = GatewayServer::bind(config).await.unwrap();
    let port = server.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let mut c = UplinkConfig::new(format!("wss://localhost:{port}/api/sled-uplink"), "tls-sled");
    c.token = Some("s".into());
    c.ca_file = Some(cert.clone());
    let uplink = Uplink::start(c).unwrap();
    let mut link = uplink.watch_link();
    within("the TLS connection", async {
        while !matches!(*link.borrow_and_update(), LinkState::Connected { .. }) {
            link.changed().await.unwrap();
        }
    })
    .await;
    uplink.shutdown().await;

    // The console over HTTPS: its session cookie is Secure, and its own origin is https://.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await.unwrap();
    let body = r#"{"token":"a"}"#;
    let request = format!(
        "POST /console/session HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: https://localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = within("the console's answer", stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let cookie = answer.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap();
    assert!(cookie.contains("Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");

    let _ = stop.send(());
}

#[tokio::test]
async fn a_gateway_with_an_unusable_certificate_does_not_start() {
    use uplink_tokio::gateway::{GatewayServer, GatewayServerConfig};
    let dir = uplink_tests::temp_dir();
    let missing = dir.path().join("no-such-cert.pem");
    let mut config = GatewayServerConfig::new("127.0.0.1:0".parse().unwrap(), vec!["s".into()], "a");
    config.tls = Some((missing.clone(), missing));
    let result = GatewayServer::bind(config).await;
    assert!(matches!(
        result,
        Err(uplink_tokio::gateway::GatewayStartError::Tls { .. }
            | uplink_tokio::gateway::GatewayStartError::NoCertificate(_))
    ));
    // A zero handshake timeout would cut off every client: refused at start, like the certificate.
    let mut config = GatewayServerConfig::new("127.0.0.1:0".parse().unwrap(), vec!["s".into()], "a");
    config.handshake_timeout = std::time::Duration::ZERO;
    let result = GatewayServer::bind(config).await;
    assert!(matches!(result, Err(uplink_tokio::gateway::GatewayStartError::ZeroHandshakeTimeout)));
}
