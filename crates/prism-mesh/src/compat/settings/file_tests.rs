//! The `service_discovery` YAML configuration as a user writes it: the shipped files, `${VAR}`
//! expansion, errors that name the key and the file (and never a secret), environment
//! overrides, durations, and a mesh built from a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::settings::BackendKind;
use crate::{DiscoverySettings, ErrorKind, InstanceStatus, NatsAuth, StorageKind, Strategy};

const SECRET_TOKEN: &str = "tok-7f3a9c-SECRET";
const SECRET_PASSWORD: &str = "pw-hunter2-SECRET";
const SECRET_SEED: &str = "SUAKSEEDSECRET0123456789";

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

/// An injected environment holding exactly `vars`.
fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn parse(yaml: &str, vars: &[(&str, &str)]) -> crate::Result<DiscoverySettings> {
    DiscoverySettings::from_yaml_str(yaml, "conf/app.yaml", &env(vars))
}

/// The error message of a configuration that must be rejected.
fn rejected(yaml: &str, vars: &[(&str, &str)]) -> String {
    let err = parse(yaml, vars).expect_err("configuration should be rejected");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    err.to_string()
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should mention {part:?}"
        );
    }
}

fn assert_no_secret(text: &str) {
    for secret in [SECRET_TOKEN, SECRET_PASSWORD, SECRET_SEED] {
        assert!(!text.contains(secret), "secret leaked in: {text}");
    }
}

#[test]
fn shipped_dev_file_loads_with_memory_backend_and_no_environment() {
    let path = config_dir().join("service_discovery.yaml");
    let settings = DiscoverySettings::from_file_with(&path, &env(&[])).unwrap();
    assert_eq!(settings.backend, BackendKind::Memory);
    assert_eq!(settings.nats.urls, ["nats://127.0.0.1:4222"]);
    assert_eq!(
        settings.nats.auth, None,
        "`${{NATS_TOKEN:-}}` unset means no token"
    );
    assert_eq!(settings.nats.storage, StorageKind::Memory);
    assert_eq!(settings.nats.client_name.as_deref(), Some("prism-dev"));
    assert_eq!(settings.instance_ttl, Duration::from_secs(10));
    assert_eq!(settings.heartbeat_interval, Duration::from_secs(3));
    assert_eq!(settings.health_check_interval, Duration::from_secs(10));
    assert_eq!(settings.drain_period, Duration::ZERO);
    assert!(settings.auto_register && settings.auto_deregister);
    assert_eq!(
        settings.load_balancing.strategy,
        Strategy::WeightedRoundRobin
    );
    assert_eq!(
        settings.load_balancing.statuses,
        [
            InstanceStatus::Healthy,
            InstanceStatus::Starting,
            InstanceStatus::Unknown
        ]
    );
    assert_eq!(
        settings.metrics.listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(settings.source, path.display().to_string());
    settings.mesh_builder().unwrap();
}

#[test]
fn shipped_dev_file_switches_to_local_nats_from_its_variables() {
    let path = config_dir().join("service_discovery.yaml");
    let settings = DiscoverySettings::from_file_with(
        &path,
        &env(&[
            ("PRISM_DEV_BACKEND", "nats"),
            ("NATS_URL", "nats://10.1.2.3:4222"),
            ("NATS_TOKEN", SECRET_TOKEN),
            ("SERVICE_NAME", "orders-api"),
        ]),
    )
    .unwrap();
    assert_eq!(settings.backend, BackendKind::Nats);
    assert_eq!(settings.nats.urls, ["nats://10.1.2.3:4222"]);
    assert_eq!(
        settings.nats.auth,
        Some(NatsAuth::Token(SECRET_TOKEN.into()))
    );
    assert_eq!(settings.nats.client_name.as_deref(), Some("orders-api"));
    assert_no_secret(&format!("{settings:?}"));
    settings.mesh_builder().unwrap();
}

#[test]
fn shipped_production_file_loads_cluster_tls_and_creds_from_required_variables() {
    let path = config_dir().join("service_discovery.production.yaml");
    let settings = DiscoverySettings::from_file_with(
        &path,
        &env(&[
            ("NATS_CREDS_FILE", "/run/secrets/orders.creds"),
            ("NATS_TLS_DIR", "/run/tls"),
            ("SERVICE_NAME", "orders-api"),
        ]),
    )
    .unwrap();
    let nats = &settings.nats;
    assert_eq!(settings.backend, BackendKind::Nats);
    assert_eq!(
        nats.urls,
        [
            "tls://nats-1.prism.internal:4222",
            "tls://nats-2.prism.internal:4222",
            "tls://nats-3.prism.internal:4222"
        ]
    );
    assert_eq!(
        nats.auth,
        Some(NatsAuth::CredentialsFile(PathBuf::from(
            "/run/secrets/orders.creds"
        )))
    );
    assert_eq!(nats.tls_ca, Some(PathBuf::from("/run/tls/ca.pem")));
    assert_eq!(
        nats.tls_client_cert,
        Some((
            PathBuf::from("/run/tls/client.pem"),
            PathBuf::from("/run/tls/client-key.pem")
        ))
    );
    assert!(nats.tls_required);
    assert_eq!(nats.replicas, 3);
    assert_eq!(nats.storage, StorageKind::File);
    assert_eq!(nats.client_name.as_deref(), Some("orders-api"));
    assert_eq!(settings.instance_ttl, Duration::from_secs(20));
    assert_eq!(settings.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(settings.tombstone_ttl, Duration::from_secs(300));
    assert_eq!(settings.drain_period, Duration::from_secs(10));
    assert_eq!(
        settings.load_balancing.strategy,
        Strategy::WeightedRoundRobin
    );
    assert_eq!(settings.load_balancing.statuses, [InstanceStatus::Healthy]);
    assert_eq!(
        settings.load_balancing.services.get("orders"),
        Some(&Strategy::LeastOutstanding)
    );
    assert_eq!(
        settings.load_balancing.services.get("sessions"),
        Some(&Strategy::ConsistentHash)
    );
    assert_eq!(
        settings.metrics.listen,
        Some("0.0.0.0:9464".parse().unwrap())
    );
    settings.mesh_builder().unwrap();

    // Defaults of the optional variables.
    let settings = DiscoverySettings::from_file_with(
        &path,
        &env(&[("NATS_CREDS_FILE", "/run/secrets/orders.creds")]),
    )
    .unwrap();
    assert_eq!(
        settings.nats.tls_ca,
        Some(PathBuf::from("/etc/nats/tls/ca.pem"))
    );
    assert_eq!(settings.nats.client_name.as_deref(), Some("prism-service"));
}

#[test]
fn shipped_production_file_without_its_required_variable_names_variable_key_and_file() {
    let path = config_dir().join("service_discovery.production.yaml");
    let err = DiscoverySettings::from_file_with(&path, &env(&[])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert_mentions(
        &err.to_string(),
        &[
            "NATS_CREDS_FILE",
            "service_discovery.backend_config.nats.creds_file",
            "service_discovery.production.yaml",
        ],
    );
}

#[test]
fn var_with_default_uses_the_default_when_unset_or_empty_and_the_value_when_set() {
    let yaml = "service_discovery:\n  backend_config:\n    nats:\n      client_name: ${APP:-fallback}\n      bucket: b-${ENVIRONMENT:-dev}\n";
    let unset = parse(yaml, &[]).unwrap();
    assert_eq!(unset.nats.client_name.as_deref(), Some("fallback"));
    assert_eq!(unset.nats.bucket, "b-dev");
    let empty = parse(yaml, &[("APP", "")]).unwrap();
    assert_eq!(empty.nats.client_name.as_deref(), Some("fallback"));
    let set = parse(yaml, &[("APP", "orders"), ("ENVIRONMENT", "prod")]).unwrap();
    assert_eq!(set.nats.client_name.as_deref(), Some("orders"));
    assert_eq!(set.nats.bucket, "b-prod");
}

#[test]
fn double_dollar_is_a_literal_dollar_and_is_not_expanded() {
    let yaml = "service_discovery:\n  backend_config:\n    nats:\n      user: app\n      password: p$$${PW}$${NOT_A_VAR}\n";
    let settings = parse(yaml, &[("PW", "x")]).unwrap();
    let Some(NatsAuth::UserPassword { password, .. }) = settings.nats.auth else {
        panic!("user and password expected, got {:?}", settings.nats.auth);
    };
    assert_eq!(password, "p$x${NOT_A_VAR}");
}

#[test]
fn missing_variable_without_default_names_the_variable_the_key_and_the_file() {
    let message = rejected(
        "service_discovery:\n  backend_config:\n    nats:\n      user: app\n      password: ${NATS_PASSWORD}\n",
        &[],
    );
    assert_mentions(
        &message,
        &[
            "NATS_PASSWORD",
            "service_discovery.backend_config.nats.password",
            "conf/app.yaml",
        ],
    );
    // In a list, the index is part of the path.
    let message = rejected(
        "service_discovery:\n  backend_config:\n    nats:\n      urls: [nats://a:1, \"${SECOND}\"]\n",
        &[],
    );
    assert_mentions(
        &message,
        &["SECOND", "service_discovery.backend_config.nats.urls[1]"],
    );
}

#[test]
fn unknown_keys_anywhere_are_errors_naming_the_key_path_and_the_file() {
    for (yaml, path) in [
        (
            "service_discovery:\n  heartbeat: 3\n",
            "service_discovery.heartbeat",
        ),
        (
            "service_discovery:\n  backend_config:\n    nats:\n      tls:\n        ca: /ca.pem\n",
            "service_discovery.backend_config.nats.tls.ca",
        ),
        (
            "service_discovery:\n  backend_config:\n    consul: {}\n",
            "service_discovery.backend_config.consul",
        ),
        (
            "service_discovery:\n  load_balancing:\n    stratgy: random\n",
            "service_discovery.load_balancing.stratgy",
        ),
        ("service_discovery: {}\nlogging: {}\n", "`logging`"),
    ] {
        let message = rejected(yaml, &[]);
        assert_mentions(&message, &[path, "conf/app.yaml"]);
    }
}

#[test]
fn invalid_strategy_status_duration_backend_and_url_errors_name_the_key_and_the_file() {
    for (yaml, parts) in [
        (
            "service_discovery:\n  load_balancing:\n    strategy: fastest\n",
            &["service_discovery.load_balancing.strategy", "fastest"][..],
        ),
        (
            "service_discovery:\n  load_balancing:\n    services: {orders: fastest}\n",
            &["service_discovery.load_balancing.services.orders"][..],
        ),
        (
            "service_discovery:\n  load_balancing:\n    statuses: [healthy, sick]\n",
            &["service_discovery.load_balancing.statuses[1]", "sick"][..],
        ),
        (
            "service_discovery:\n  load_balancing:\n    statuses: [stopping]\n",
            &["service_discovery.load_balancing.statuses"][..],
        ),
        (
            "service_discovery:\n  heartbeat_interval: soon\n",
            &["service_discovery.heartbeat_interval", "invalid duration"][..],
        ),
        (
            "service_discovery:\n  health_check_interval: 0\n",
            &["service_discovery.health_check_interval", "above zero"][..],
        ),
        (
            "service_discovery:\n  instance_ttl: -10\n",
            &["service_discovery.instance_ttl", "negative"][..],
        ),
        (
            "service_discovery:\n  instance_ttl: 3s\n  heartbeat_interval: 3s\n",
            &["service_discovery.heartbeat_interval", "below instance_ttl"][..],
        ),
        (
            "service_discovery:\n  backend: consul\n",
            &["service_discovery.backend", "consul"][..],
        ),
        (
            "service_discovery:\n  backend_config:\n    nats:\n      url: http://a:4222\n",
            &["service_discovery.backend_config.nats.url", "scheme"][..],
        ),
        (
            "service_discovery:\n  backend_config:\n    nats:\n      url: nats://a:1\n      urls: [nats://b:1]\n",
            &["service_discovery.backend_config.nats.urls", "not both"][..],
        ),
        (
            "service_discovery:\n  backend_config:\n    nats:\n      user: app\n",
            &["service_discovery.backend_config.nats.user", "password"][..],
        ),
    ] {
        let message = rejected(yaml, &[]);
        assert_mentions(&message, parts);
        assert_mentions(&message, &["conf/app.yaml"]);
    }
}

#[test]
fn environment_overrides_win_over_the_file() {
    let yaml = r#"
service_discovery:
  backend: memory
  backend_config:
    nats:
      url: nats://file:4222
      creds_file: /file.creds
      tls: { ca_file: /file-ca.pem }
  instance_ttl: 10
  heartbeat_interval: 3
  health_check_interval: 30
  load_balancing:
    strategy: random
"#;
    let settings = parse(
        yaml,
        &[
            ("PRISM_BACKEND", "nats"),
            ("PRISM_NATS_URL", "nats://env-1:4222,nats://env-2:4222"),
            ("PRISM_NATS_TOKEN", SECRET_TOKEN),
            ("PRISM_NATS_TLS_CA", "/env-ca.pem"),
            ("PRISM_INSTANCE_TTL", "20s"),
            ("PRISM_HEARTBEAT_INTERVAL", "4"),
            ("PRISM_HEALTH_CHECK_INTERVAL", "1m"),
            ("PRISM_LB_STRATEGY", "least_outstanding"),
            ("NATS_URL", "nats://ignored:4222"),
        ],
    )
    .unwrap();
    assert_eq!(settings.backend, BackendKind::Nats);
    assert_eq!(
        settings.nats.urls,
        ["nats://env-1:4222", "nats://env-2:4222"]
    );
    assert_eq!(
        settings.nats.auth,
        Some(NatsAuth::Token(SECRET_TOKEN.into())),
        "an environment auth method replaces the file's"
    );
    assert_eq!(settings.nats.tls_ca, Some(PathBuf::from("/env-ca.pem")));
    assert_eq!(settings.instance_ttl, Duration::from_secs(20));
    assert_eq!(settings.heartbeat_interval, Duration::from_secs(4));
    assert_eq!(settings.health_check_interval, Duration::from_secs(60));
    assert_eq!(settings.load_balancing.strategy, Strategy::LeastOutstanding);

    let users = parse(
        yaml,
        &[
            ("PRISM_NATS_USER", "svc"),
            ("PRISM_NATS_PASSWORD", SECRET_PASSWORD),
        ],
    )
    .unwrap();
    assert_eq!(
        users.nats.auth,
        Some(NatsAuth::UserPassword {
            user: "svc".into(),
            password: SECRET_PASSWORD.into()
        })
    );
    let creds = parse(yaml, &[("PRISM_NATS_CREDS", "/env.creds")]).unwrap();
    assert_eq!(
        creds.nats.auth,
        Some(NatsAuth::CredentialsFile(PathBuf::from("/env.creds")))
    );
    let seed = parse(yaml, &[("PRISM_NATS_NKEY_SEED", SECRET_SEED)]).unwrap();
    assert_eq!(seed.nats.auth, Some(NatsAuth::NkeySeed(SECRET_SEED.into())));
}

#[test]
fn invalid_environment_override_names_the_variable() {
    let message = rejected(
        "service_discovery: {}\n",
        &[("PRISM_INSTANCE_TTL", "forever")],
    );
    assert_mentions(&message, &["PRISM_INSTANCE_TTL", "invalid duration"]);
    let message = rejected(
        "service_discovery: {}\n",
        &[("PRISM_LB_STRATEGY", "fastest")],
    );
    assert_mentions(&message, &["PRISM_LB_STRATEGY", "fastest"]);
    let message = rejected(
        "service_discovery: {}\n",
        &[("PRISM_NATS_URL", "http://x:1")],
    );
    assert_mentions(&message, &["PRISM_NATS_URL", "scheme"]);
}

#[test]
fn nats_url_is_used_only_when_no_url_is_configured_anywhere() {
    let bare = "service_discovery:\n  backend: nats\n";
    let settings = parse(bare, &[("NATS_URL", "nats://from-nats-url:4222")]).unwrap();
    assert_eq!(settings.nats.urls, ["nats://from-nats-url:4222"]);
    let settings = parse(bare, &[]).unwrap();
    assert_eq!(settings.nats.urls, ["nats://127.0.0.1:4222"]);
    let configured =
        "service_discovery:\n  backend_config:\n    nats:\n      url: nats://file:4222\n";
    let settings = parse(configured, &[("NATS_URL", "nats://from-nats-url:4222")]).unwrap();
    assert_eq!(settings.nats.urls, ["nats://file:4222"]);
    let from_env = DiscoverySettings::from_env_with(&env(&[
        ("NATS_URL", "nats://from-nats-url:4222"),
        ("PRISM_BACKEND", "nats"),
    ]))
    .unwrap();
    assert_eq!(from_env.nats.urls, ["nats://from-nats-url:4222"]);
}

#[test]
fn secrets_never_appear_in_error_messages_or_debug_output() {
    let nats = |body: &str| format!("service_discovery:\n  backend_config:\n    nats:\n{body}");
    let failing = [
        // A secret in a type error.
        nats(&format!("      token: [{SECRET_TOKEN}]\n")),
        nats(&format!("      password: {{x: {SECRET_PASSWORD}}}\n")),
        // Password without user; user and password without... several methods.
        nats(&format!("      password: {SECRET_PASSWORD}\n")),
        nats(&format!(
            "      token: {SECRET_TOKEN}\n      nkey_seed: {SECRET_SEED}\n"
        )),
        // Credentials inside a url with a bad scheme.
        nats(&format!("      url: http://u:{SECRET_PASSWORD}@h:1\n")),
        // A secret next to a broken variable reference in the same value.
        nats(&format!(
            "      user: u\n      password: {SECRET_PASSWORD}${{UNSET}}\n"
        )),
        nats(&format!(
            "      user: u\n      password: {SECRET_PASSWORD}${{\n"
        )),
        // A misspelled key holding a secret.
        nats(&format!("      passwd: {SECRET_PASSWORD}\n")),
    ];
    for yaml in &failing {
        let message = rejected(yaml, &[("SEED", SECRET_SEED)]);
        assert_no_secret(&message);
        assert_no_secret(&format!("{:?}", parse(yaml, &[]).expect_err("rejected")));
    }
    let message = rejected(
        "service_discovery: {}\n",
        &[
            ("PRISM_NATS_TOKEN", SECRET_TOKEN),
            ("PRISM_NATS_NKEY_SEED", SECRET_SEED),
        ],
    );
    assert_no_secret(&message);

    // Loaded settings: Debug of the settings and of the builder shows where a secret is,
    // never what it is.
    let loaded = [
        (
            nats(&format!("      token: {SECRET_TOKEN}\n")),
            "auth: Some(Token(<redacted>))",
        ),
        (
            nats(&format!(
                "      user: app\n      password: {SECRET_PASSWORD}\n"
            )),
            "UserPassword { user: \"app\", .. }",
        ),
        (
            nats("      nkey_seed: ${SEED}\n"),
            "auth: Some(NkeySeed(<redacted>))",
        ),
        (
            nats(&format!("      url: nats://app:{SECRET_PASSWORD}@h:4222\n")),
            "nats://<redacted>@h:4222",
        ),
    ];
    for (yaml, marker) in &loaded {
        let settings = parse(yaml, &[("SEED", SECRET_SEED)]).unwrap();
        let shown = format!(
            "{settings:?} {settings:#?} {:?}",
            settings.mesh_builder().unwrap()
        );
        assert_no_secret(&shown);
        assert!(shown.contains(marker), "{marker} in {shown}");
    }
}

#[test]
fn durations_accept_integer_and_float_seconds_and_humantime_strings() {
    let settings = parse(
        r#"
service_discovery:
  instance_ttl: 30
  heartbeat_interval: 2.5
  health_check_interval: "1m 30s"
  cleanup_interval: 2m
  tombstone_ttl: "90"
  drain_period: 750ms
  backend_config:
    nats:
      connect_timeout: 0.25
      request_timeout: 1h
"#,
        &[],
    )
    .unwrap();
    assert_eq!(settings.instance_ttl, Duration::from_secs(30));
    assert_eq!(settings.heartbeat_interval, Duration::from_millis(2500));
    assert_eq!(settings.health_check_interval, Duration::from_secs(90));
    assert_eq!(settings.cleanup_interval, Duration::from_secs(120));
    assert_eq!(settings.tombstone_ttl, Duration::from_secs(90));
    assert_eq!(settings.drain_period, Duration::from_millis(750));
    assert_eq!(settings.nats.connect_timeout, Duration::from_millis(250));
    assert_eq!(settings.nats.request_timeout, Duration::from_secs(3600));
}

#[test]
fn from_file_names_the_file_in_errors_and_a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("discovery.yaml");
    std::fs::write(&path, "service_discovery:\n  auto_register: maybe\n").unwrap();
    let err = DiscoverySettings::from_file_with(&path, &env(&[])).unwrap_err();
    assert_mentions(
        &err.to_string(),
        &[
            &path.display().to_string(),
            "service_discovery.auto_register",
        ],
    );

    let missing = dir.path().join("absent.yaml");
    let err = DiscoverySettings::from_file_with(&missing, &env(&[])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert_mentions(&err.to_string(), &["absent.yaml"]);
}

#[test]
fn the_compose_client_settings_point_at_the_replicated_cluster() {
    let settings =
        DiscoverySettings::from_file(config_dir().join("service_discovery.compose.yaml"))
            .expect("compose settings load");
    assert_eq!(settings.nats.urls.len(), 3);
    assert_eq!(settings.nats.replicas, 3);
}

#[test]
fn the_service_section_describes_the_instance_to_register_with_expansion() {
    let settings = parse(
        r#"
service_discovery:
  service:
    name: market-data
    host: ${POD_IP}
    port: "8080"
    tags: [v2, primary]
    zone: eu-west-1a
    metadata: { version: "2.1", weight: 50, canary: false }
"#,
        &[("POD_IP", "10.0.0.5")],
    )
    .unwrap();
    let service = settings.service.expect("service section");
    assert_eq!(
        (service.name.as_str(), service.host.as_str(), service.port),
        ("market-data", "10.0.0.5", 8080)
    );
    let instance = service.instance().unwrap();
    assert_eq!(&*instance.tags, ["v2", "primary"]);
    assert_eq!(instance.zone.as_deref(), Some("eu-west-1a"));
    assert_eq!(instance.weight, 50, "metadata weight, as the seed reads it");
    assert_eq!(instance.metadata["version"], "2.1");
    assert_eq!(instance.metadata["canary"], false);
    assert_ne!(
        instance.id,
        service.instance().unwrap().id,
        "each start is a new instance"
    );

    assert!(parse("service_discovery:\n  auto_register: true\n", &[])
        .unwrap()
        .service
        .is_none());
}

#[test]
fn a_service_section_with_a_missing_or_bad_value_is_refused_naming_the_key() {
    for (yaml, parts) in [
        (
            "service_discovery:\n  service:\n    host: a\n    port: 1\n",
            &["service_discovery.service.name", "missing"][..],
        ),
        (
            "service_discovery:\n  service:\n    name: a\n    host: a\n    port: 70000\n",
            &["service_discovery.service.port", "1 to 65535", "70000"],
        ),
        (
            "service_discovery:\n  service:\n    name: a\n    host: a\n    port: 80\n    weight: heavy\n",
            &["service_discovery.service.weight", "heavy"],
        ),
        (
            "service_discovery:\n  service:\n    name: 'bad name'\n    host: a\n    port: 80\n",
            &["service_discovery.service", "bad name"],
        ),
        (
            "service_discovery:\n  service:\n    name: a\n    host: a\n    port: 80\n    tgas: [x]\n",
            &["service_discovery.service.tgas", "unknown key"],
        ),
    ] {
        assert_mentions(&rejected(yaml, &[]), parts);
    }
}

/// The configuration samples of MarketPrism's discovery module README, in YAML; the dict
/// samples are written as the same keys under `service_discovery:`.
#[test]
fn the_python_modules_readme_configuration_samples_load() {
    // "Development environment", as the README writes it.
    let dev = parse(
        "service_discovery:\n  backend: \"memory\"\n  health_check_interval: 10\n  instance_ttl: 60\n",
        &[],
    )
    .unwrap();
    assert_eq!(dev.backend, BackendKind::Memory);
    assert_eq!(dev.instance_ttl, Duration::from_secs(60));
    // "NATS backend".
    let nats = parse(
        "service_discovery:\n  backend: 'nats'\n  backend_config:\n    url: 'nats://localhost:4222'\n",
        &[],
    )
    .unwrap();
    assert_eq!(nats.nats.urls, ["nats://localhost:4222"]);
    // "Complete configuration", with the NATS backend for its Consul one.
    let complete = parse(
        r#"
service_discovery:
  backend: nats
  backend_config:
    url: 'nats://nats:4222'
  health_check_interval: 30
  instance_ttl: 300
  cleanup_interval: 60
  auto_register: True
  auto_deregister: True
"#,
        &[],
    )
    .unwrap();
    assert_eq!(complete.instance_ttl, Duration::from_secs(300));
    assert_eq!(complete.cleanup_interval, Duration::from_secs(60));
    assert!(complete.auto_register && complete.service.is_none());
    // Its backends this mesh does not replace are refused by name.
    assert_mentions(
        &rejected(
            "service_discovery:\n  backend: consul\n  backend_config:\n    url: http://consul:8500\n",
            &[],
        ),
        &["service_discovery.backend", "consul"],
    );
}

#[test]
fn the_shard_count_is_read_from_the_nats_section_and_bounded() {
    let settings = parse(
        "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      shards: 3\n",
        &[],
    )
    .unwrap();
    assert_eq!(settings.nats.shard_count(), Some(3));
    assert_eq!(
        parse("service_discovery:\n  backend: nats\n", &[])
            .unwrap()
            .nats
            .shard_count(),
        None
    );
    for bad in ["0", "65", "many"] {
        let message = rejected(
            &format!("service_discovery:\n  backend_config:\n    nats:\n      shards: {bad}\n"),
            &[],
        );
        assert_mentions(&message, &["service_discovery.backend_config.nats.shards"]);
    }
}
