//! Security options against real nats-server processes configured for them: TLS with a CA
//! made here (server-only and mutual), token, user/password and NKey authentication.
//! Secrets never show in errors, Debug output or logs.

use std::path::{Path, PathBuf};

use std::time::Duration;

use prism_mesh::{ErrorKind, InstanceStatus, Mesh, NatsOptions, ServiceInstance};
use prism_tests::{test_options, wait_view, Captured, NatsServer};

const WAIT: Duration = Duration::from_secs(5);

/// Connects with `options`, registers one instance and sees it in the view.
async fn round_trip(options: NatsOptions) {
    let mesh = Mesh::builder()
        .nats(options)
        .connect()
        .await
        .expect("authorised mesh connects");
    let instance = ServiceInstance::builder("secured", "127.0.0.1", 8443)
        .status(InstanceStatus::Healthy)
        .build()
        .unwrap();
    mesh.register(instance).await.expect("register");
    wait_view(&mesh, "secured", WAIT, "the instance", |v| v.len() == 1).await;
    mesh.shutdown().await;
}

/// Connects with `options` expecting a refusal; returns the error text after checking
/// it names the url and none of `secrets`.
async fn refused(options: NatsOptions, secrets: &[&str]) -> prism_mesh::Error {
    let url = options.urls()[0].clone();
    let started = std::time::Instant::now();
    let err = Mesh::builder()
        .nats(options)
        .connect()
        .await
        .expect_err("connection must be refused");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusal took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains(&url), "{text:?} does not name {url}");
    for secret in secrets {
        assert!(!text.contains(secret), "error leaks a secret: {text:?}");
        assert!(
            !format!("{err:?}").contains(secret),
            "error Debug leaks a secret"
        );
    }
    err
}

fn assert_never_logged(logs: &Captured, secrets: &[&str]) {
    let text = logs.text();
    assert!(!text.is_empty(), "the test captured no logs at all");
    for secret in secrets {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "a secret was logged: {leaks:#?}");
    }
}

// Current-thread runtimes: every task logs on the test thread, into the captured sink.
#[tokio::test(flavor = "current_thread")]
async fn token_authentication_admits_the_right_token_only_and_never_leaks_it() {
    let token = "tok-7Hq2-secret-Zx9";
    let server = NatsServer::start_with_config(&format!("authorization {{ token: \"{token}\" }}"));
    let logs = Captured::default();
    let _guard = logs.install();

    round_trip(test_options(&server.url()).token(token)).await;
    let err = refused(
        test_options(&server.url()).token("tok-wrong-guess-123"),
        &[token, "tok-wrong-guess-123"],
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    refused(test_options(&server.url()), &[token]).await;

    let options = test_options(&server.url()).token(token);
    assert!(
        !format!("{options:?}").contains(token),
        "Debug of options shows the token"
    );
    assert_never_logged(&logs, &[token, "tok-wrong-guess-123"]);
}

#[tokio::test(flavor = "current_thread")]
async fn user_and_password_authentication_admits_the_user_and_never_leaks_the_password() {
    let password = "pw-Lk38-hunter2-Qa";
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users: [ {{ user: alice, password: \"{password}\" }} ] }}"
    ));
    let logs = Captured::default();
    let _guard = logs.install();

    round_trip(test_options(&server.url()).user_password("alice", password)).await;
    let err = refused(
        test_options(&server.url()).user_password("alice", "pw-not-it-000"),
        &[password, "pw-not-it-000"],
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");

    // Credentials in the url are redacted in errors too.
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let url = format!("nats://alice:pw-in-url-555@127.0.0.1:{port}");
    let err = Mesh::builder()
        .nats(test_options(&url))
        .connect()
        .await
        .expect_err("wrong password in url");
    assert!(!err.to_string().contains("pw-in-url-555"), "{err}");
    let options = test_options(&server.url()).user_password("alice", password);
    assert!(!format!("{options:?}").contains(password));
    assert_never_logged(&logs, &[password, "pw-not-it-000", "pw-in-url-555"]);
}

#[tokio::test(flavor = "current_thread")]
async fn nkey_authentication_admits_the_key_holder_only_and_never_leaks_the_seed() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}",
        user.public_key()
    ));
    let logs = Captured::default();
    let _guard = logs.install();

    round_trip(test_options(&server.url()).nkey_seed(seed.clone())).await;
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let err = refused(
        test_options(&server.url()).nkey_seed(stranger.clone()),
        &[&seed, &stranger],
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let err = refused(
        test_options(&server.url()).nkey_seed("SUnot-a-seed"),
        &[&seed, "SUnot-a-seed"],
    )
    .await;
    assert!(
        matches!(err.kind(), ErrorKind::Connect | ErrorKind::InvalidConfig),
        "{err}"
    );
    let options = test_options(&server.url()).nkey_seed(seed.clone());
    assert!(!format!("{options:?}").contains(&seed));
    assert_never_logged(&logs, &[&seed, &stranger]);
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it; also a
/// client certificate. Returns (ca, server cert, server key, client cert, client key).
fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["prism-client".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("server.pem", server.pem()),
        write("server-key.pem", server_key.serialize_pem()),
        write("client.pem", client.pem()),
        write("client-key.pem", client_key.serialize_pem()),
    )
}

#[tokio::test]
async fn tls_with_a_private_ca_connects_and_an_unknown_ca_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key, _, _) = make_pki(pki.path());
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {cert:?}, key_file: {key:?}, timeout: 2 }}"
    ));
    let url = server.url().replace("nats://", "tls://");

    round_trip(test_options(&url).tls_ca(&ca)).await;
    round_trip(test_options(&server.url()).tls_ca(&ca).tls_required(true)).await;

    // Without our CA the server's certificate is not trusted.
    let err = refused(test_options(&url), &[]).await;
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    // A missing CA file is named.
    let err = Mesh::builder()
        .nats(test_options(&url).tls_ca(pki.path().join("nope.pem")))
        .connect()
        .await
        .expect_err("a missing CA file must be refused");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key, client_cert, client_key) = make_pki(pki.path());
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {cert:?}, key_file: {key:?}, ca_file: {ca:?}, verify: true, timeout: 2 }}"
    ));
    let url = server.url().replace("nats://", "tls://");

    round_trip(
        test_options(&url)
            .tls_ca(&ca)
            .tls_client_cert(&client_cert, &client_key),
    )
    .await;
    refused(test_options(&url).tls_ca(&ca), &[]).await;
}

#[tokio::test]
async fn a_plain_client_is_refused_where_tls_is_required_by_the_client() {
    // The server speaks plain NATS; a client that requires TLS must not fall back.
    let server = NatsServer::start();
    let err = refused(test_options(&server.url()).tls_required(true), &[]).await;
    assert!(
        matches!(err.kind(), ErrorKind::Connect | ErrorKind::Timeout),
        "{err}"
    );
}
