//! The settings' unit tests: every key, its errors, expansion and overrides.

use std::path::PathBuf;

use super::expand::expand_str;
use super::*;
use crate::config::{NatsAuth, StorageKind};

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn load(yaml: &str, vars: &[(&str, &str)]) -> Result<DiscoverySettings> {
    DiscoverySettings::from_yaml_str(yaml, "test.yaml", &env_of(vars))
}

fn error(yaml: &str, vars: &[(&str, &str)]) -> String {
    let err = load(yaml, vars).expect_err("should fail");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    err.to_string()
}

#[test]
fn expansion_handles_default_empty_escape_and_literal_dollar() {
    let env = env_of(&[("A", "x"), ("EMPTY", "")]);
    assert_eq!(expand_str("${A}", &env).unwrap(), "x");
    assert_eq!(expand_str("a${A}b${A}", &env).unwrap(), "axbx");
    assert_eq!(expand_str("${B:-dflt}", &env).unwrap(), "dflt");
    assert_eq!(expand_str("${EMPTY:-dflt}", &env).unwrap(), "dflt");
    assert_eq!(expand_str("${EMPTY}", &env).unwrap(), "");
    assert_eq!(expand_str("${B:-}", &env).unwrap(), "");
    assert_eq!(expand_str("${B:-a:b/c}", &env).unwrap(), "a:b/c");
    assert_eq!(expand_str("$${A}", &env).unwrap(), "${A}");
    assert_eq!(expand_str("pa$word$", &env).unwrap(), "pa$word$");
    assert!(expand_str("${A", &env)
        .unwrap_err()
        .contains("unterminated"));
    assert!(expand_str("${}", &env).unwrap_err().contains("invalid"));
    assert!(expand_str("${B}", &env)
        .unwrap_err()
        .contains("B is not set"));
}

#[test]
fn empty_section_gives_library_defaults() {
    let settings = load("service_discovery:\n", &[]).unwrap();
    let defaults = DiscoverySettings::default();
    assert_eq!(settings.backend, BackendKind::Memory);
    assert_eq!(settings.timing(), Timing::default());
    assert_eq!(settings.nats.urls, [DEFAULT_NATS_URL]);
    assert_eq!(
        settings.health_check_interval,
        defaults.health_check_interval
    );
    assert_eq!(settings.load_balancing, LoadBalancingSettings::default());
    assert_eq!(settings.metrics.listen, None);
    assert_eq!(settings.source, "test.yaml");
    settings.mesh_builder().unwrap();
}

#[test]
fn missing_section_and_unknown_top_level_key_are_errors() {
    assert!(error("other: 1\n", &[]).contains("no `service_discovery` section"));
    let shown = error("service_discovery: {}\nlogging: {}\n", &[]);
    assert!(
        shown.contains("`logging`") && shown.contains("test.yaml"),
        "{shown}"
    );
    assert!(error("", &[]).contains("empty"));
    assert!(error("service_discovery: [\n", &[]).contains("not valid YAML"));
}

#[test]
fn unknown_nested_key_is_named_by_its_full_path() {
    let shown = error(
        "service_discovery:\n  backend_config:\n    nats:\n      passwrd: x\n",
        &[],
    );
    assert!(
        shown.contains(
            "test.yaml: service_discovery.backend_config.nats.passwrd: unknown key `passwrd`"
        ),
        "{shown}"
    );
    let shown = error(
        "service_discovery:\n  backend_config:\n    memory: {size: 1}\n",
        &[],
    );
    assert!(
        shown.contains("service_discovery.backend_config.memory.size"),
        "{shown}"
    );
    assert!(
        shown.contains("unknown key `size` (there are no fields)"),
        "{shown}"
    );
    let shown = error("service_discovery:\n  metrics:\n    port: 1\n", &[]);
    assert!(
        shown.contains("metrics.port: unknown key `port` (expected `listen`)"),
        "{shown}"
    );
    let shown = error("service_discovery:\n  instance_tll: 5\n", &[]);
    assert!(shown.contains("service_discovery.instance_tll"), "{shown}");
}

#[test]
fn durations_accept_seconds_floats_and_humantime() {
    let settings = load(
            "service_discovery:\n  instance_ttl: 30\n  heartbeat_interval: 2.5\n  cleanup_interval: 1m 30s\n  drain_period: 0\n  tombstone_ttl: \"500ms\"\n",
            &[],
        );
    // 500ms tombstone is below the 1 s minimum.
    assert!(settings.unwrap_err().to_string().contains("tombstone_ttl"));
    let settings = load(
            "service_discovery:\n  instance_ttl: 30\n  heartbeat_interval: 2.5\n  cleanup_interval: 1m 30s\n  drain_period: 0\n  health_check_interval: '45'\n",
            &[],
        )
        .unwrap();
    assert_eq!(settings.instance_ttl, Duration::from_secs(30));
    assert_eq!(settings.heartbeat_interval, Duration::from_millis(2500));
    assert_eq!(settings.cleanup_interval, Duration::from_secs(90));
    assert_eq!(settings.drain_period, Duration::ZERO);
    assert_eq!(settings.health_check_interval, Duration::from_secs(45));
}

#[test]
fn zero_negative_and_malformed_durations_name_the_key() {
    for (yaml, key) in [
        (
            "heartbeat_interval: 0",
            "heartbeat_interval: must be above zero",
        ),
        (
            "cleanup_interval: -1",
            "cleanup_interval: must not be negative",
        ),
        (
            "health_check_interval: -0.5",
            "health_check_interval: must not be negative",
        ),
        (
            "instance_ttl: soon",
            "instance_ttl: invalid duration \"soon\"",
        ),
        (
            "instance_ttl: true",
            "instance_ttl: invalid duration a boolean",
        ),
        ("instance_ttl: [1]", "instance_ttl: invalid type: sequence"),
    ] {
        let shown = error(&format!("service_discovery:\n  {yaml}\n"), &[]);
        assert!(shown.contains(key), "{yaml}: {shown}");
    }
}

#[test]
fn heartbeat_not_below_ttl_is_an_error_naming_the_key() {
    let shown = error(
        "service_discovery:\n  instance_ttl: 5\n  heartbeat_interval: 5s\n",
        &[],
    );
    assert!(
        shown.contains(
            "test.yaml: service_discovery.heartbeat_interval: 5s must be below instance_ttl (5s)"
        ),
        "{shown}"
    );
    let shown = error(
        "service_discovery:\n  instance_ttl: 5\n",
        &[("PRISM_HEARTBEAT_INTERVAL", "6")],
    );
    assert!(
        shown.contains("environment variable PRISM_HEARTBEAT_INTERVAL"),
        "{shown}"
    );
}

#[test]
fn nats_values_are_read() {
    let settings = load(
        r#"
service_discovery:
  backend: NATS
  backend_config:
    nats:
      urls: [nats://a:4222, "tls://b:4222"]
      creds_file: /etc/app.creds
      tls: { ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem, required: yes }
      bucket: b-1
      event_stream: EV
      subject_prefix: disc
      replicas: 3
      storage: memory
      connect_timeout: 2s
      request_timeout: 1.5
      client_name: orders-api
"#,
        &[],
    )
    .unwrap();
    let nats = &settings.nats;
    assert_eq!(settings.backend, BackendKind::Nats);
    assert_eq!(nats.urls, ["nats://a:4222", "tls://b:4222"]);
    assert_eq!(
        nats.auth,
        Some(NatsAuth::CredentialsFile(PathBuf::from("/etc/app.creds")))
    );
    assert_eq!(nats.tls_ca, Some(PathBuf::from("/ca.pem")));
    assert_eq!(
        nats.tls_client_cert,
        Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
    );
    assert!(nats.tls_required);
    assert_eq!(
        (nats.bucket.as_str(), nats.event_stream.as_str()),
        ("b-1", "EV")
    );
    assert_eq!(nats.subject_prefix, "disc");
    assert_eq!(nats.replicas, 3);
    assert_eq!(nats.storage, StorageKind::Memory);
    assert_eq!(nats.connect_timeout, Duration::from_secs(2));
    assert_eq!(nats.request_timeout, Duration::from_millis(1500));
    assert_eq!(nats.client_name.as_deref(), Some("orders-api"));
    settings.mesh_builder().unwrap();
}

#[test]
fn invalid_nats_values_name_the_key() {
    for (nats, key) in [
        (
            "url: http://x:1",
            "nats.url: unsupported url scheme \"http\"",
        ),
        (
            "url: nats://a:1\n      urls: [nats://b:1]",
            "nats.urls: give either",
        ),
        ("user: app", "nats.user: a user needs a password"),
        (
            "password: hunter2",
            "nats.password: a password needs a user",
        ),
        (
            "token: t\n      creds_file: /c",
            "nats: more than one authentication method",
        ),
        (
            "nkey_seed: S\n      nkey_seed_file: /s",
            "nats.nkey_seed_file: give either",
        ),
        ("tls: {cert_file: /c}", "nats.tls.cert_file"),
        ("replicas: 7", "nats.replicas: must be 1 to 5, got 7"),
        ("replicas: -1", "nats.replicas: expected a whole number"),
        ("storage: disk", "nats.storage: unknown storage \"disk\""),
        ("bucket: a.b", "nats.bucket"),
        ("subject_prefix: a.b", "nats.subject_prefix"),
        (
            "connect_timeout: 0s",
            "nats.connect_timeout: must be above zero",
        ),
    ] {
        let yaml = format!("service_discovery:\n  backend_config:\n    nats:\n      {nats}\n");
        let shown = error(&yaml, &[]);
        assert!(shown.contains(key), "{nats}: {shown}");
        assert!(shown.contains("test.yaml"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[test]
fn credentials_in_urls_are_redacted_in_errors() {
    let shown = error(
        "service_discovery:\n  backend_config:\n    nats:\n      url: http://bob:hunter2@h:1\n",
        &[],
    );
    assert!(
        !shown.contains("hunter2") && shown.contains("<redacted>"),
        "{shown}"
    );
}

#[test]
fn secret_keys_never_quote_their_value_on_type_errors() {
    let shown = error(
        "service_discovery:\n  backend_config:\n    nats:\n      token: [hunter2]\n",
        &[],
    );
    assert!(shown.contains("nats.token: expected a string"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    // Numbers are fine as secrets.
    let settings = load(
        "service_discovery:\n  backend_config:\n    nats:\n      token: 12345\n",
        &[],
    )
    .unwrap();
    assert_eq!(settings.nats.auth, Some(NatsAuth::Token("12345".into())));
}

#[test]
fn empty_expanded_values_count_as_absent() {
    let settings = load(
            "service_discovery:\n  instance_ttl: ${TTL:-}\n  backend_config:\n    nats:\n      token: ${NATS_TOKEN:-}\n      url: ${URL:-}\n",
            &[("NATS_URL", "nats://from-env:4222")],
        )
        .unwrap();
    assert_eq!(settings.nats.auth, None);
    assert_eq!(settings.instance_ttl, Timing::default().instance_ttl);
    assert_eq!(settings.nats.urls, ["nats://from-env:4222"]);
}

#[test]
fn environment_auth_replaces_the_file_method() {
    let yaml = "service_discovery:\n  backend_config:\n    nats:\n      creds_file: /c\n";
    let settings = load(yaml, &[("PRISM_NATS_TOKEN", "tok")]).unwrap();
    assert_eq!(settings.nats.auth, Some(NatsAuth::Token("tok".into())));

    let yaml =
        "service_discovery:\n  backend_config:\n    nats:\n      user: app\n      password: old\n";
    let settings = load(yaml, &[("PRISM_NATS_PASSWORD", "new")]).unwrap();
    assert_eq!(
        settings.nats.auth,
        Some(NatsAuth::UserPassword {
            user: "app".into(),
            password: "new".into()
        })
    );

    let shown = error(
        yaml,
        &[("PRISM_NATS_TOKEN", "t"), ("PRISM_NATS_CREDS", "/c")],
    );
    assert!(
        shown.contains("PRISM_NATS_TOKEN, PRISM_NATS_CREDS"),
        "{shown}"
    );
}

#[test]
fn statuses_strategies_and_services_are_checked() {
    let settings = load(
            "service_discovery:\n  load_balancing:\n    strategy: round-robin\n    statuses: [Healthy, unknown]\n    services: {orders: consistent_hash}\n",
            &[],
        )
        .unwrap();
    assert_eq!(settings.load_balancing.strategy, Strategy::RoundRobin);
    assert_eq!(
        settings.load_balancing.statuses,
        [InstanceStatus::Healthy, InstanceStatus::Unknown]
    );
    assert_eq!(
        settings.load_balancing.services.get("orders"),
        Some(&Strategy::ConsistentHash)
    );
    for (lb, key) in [
        (
            "strategy: fastest",
            "load_balancing.strategy: unknown load-balancing strategy \"fastest\"",
        ),
        (
            "statuses: [healthy, sick]",
            "load_balancing.statuses[1]: unknown status \"sick\"",
        ),
        (
            "statuses: [maintenance]",
            "load_balancing.statuses: status maintenance cannot be eligible",
        ),
        (
            "statuses: []",
            "load_balancing.statuses: the status fallback order is empty",
        ),
        (
            "services: {orders: fastest}",
            "load_balancing.services.orders: unknown load-balancing strategy",
        ),
        (
            "services: {'bad name': random}",
            "load_balancing.services.bad name",
        ),
    ] {
        let shown = error(
            &format!("service_discovery:\n  load_balancing:\n    {lb}\n"),
            &[],
        );
        assert!(shown.contains(key), "{lb}: {shown}");
    }
}

#[test]
fn metrics_listen_is_parsed() {
    let settings = load(
        "service_discovery:\n  metrics:\n    listen: 127.0.0.1:9464\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        settings.metrics.listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let shown = error("service_discovery:\n  metrics:\n    listen: nowhere\n", &[]);
    assert!(
        shown.contains("service_discovery.metrics.listen"),
        "{shown}"
    );
}

#[test]
fn yaml_merge_keys_are_applied() {
    let settings = load(
        "service_discovery:\n  <<: {instance_ttl: 20}\n  heartbeat_interval: 4\n",
        &[],
    )
    .unwrap();
    assert_eq!(settings.instance_ttl, Duration::from_secs(20));
}

#[test]
fn from_env_applies_overrides_to_defaults() {
    let settings = DiscoverySettings::from_env_with(&env_of(&[
        ("PRISM_BACKEND", "nats"),
        ("PRISM_NATS_URL", "nats://a:1, nats://b:2"),
        ("PRISM_LB_STRATEGY", "random"),
    ]))
    .unwrap();
    assert_eq!(settings.backend, BackendKind::Nats);
    assert_eq!(settings.nats.urls, ["nats://a:1", "nats://b:2"]);
    assert_eq!(settings.load_balancing.strategy, Strategy::Random);
    assert_eq!(settings.source, "environment");
    let err = DiscoverySettings::from_env_with(&env_of(&[("PRISM_BACKEND", "consul")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("environment variable PRISM_BACKEND: unknown backend"),
        "{err}"
    );
    let err = DiscoverySettings::from_env_with(&env_of(&[("PRISM_HEARTBEAT_INTERVAL", "20")]))
        .unwrap_err()
        .to_string();
    assert!(
            err.contains("environment variable PRISM_HEARTBEAT_INTERVAL (service_discovery.heartbeat_interval): 20s must be below instance_ttl (10s)"),
            "{err}"
        );
}

#[test]
fn the_nkey_seed_file_goes_into_the_nats_options_every_caller_uses() {
    let settings = DiscoverySettings::from_yaml_str(
            "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      nkey_seed_file: /run/seed\n      inbox_prefix: _INBOX_orders\n",
            "inline.yaml",
            &|_| None,
        )
        .unwrap();
    assert_eq!(
        settings.nats.auth,
        Some(NatsAuth::NkeySeedFile(PathBuf::from("/run/seed")))
    );
    assert_eq!(settings.nats.inbox_prefix.as_deref(), Some("_INBOX_orders"));
}

#[test]
fn the_event_streams_retention_is_read_from_the_nats_section() {
    let settings = load(
        "service_discovery:\n  backend_config:\n    nats:\n      event_max_age: 2d\n      event_max_bytes: 5368709120\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        settings.nats.event_max_age,
        Duration::from_secs(2 * 24 * 3600)
    );
    assert_eq!(settings.nats.event_max_bytes, 5 << 30);
    let shown = error(
        "service_discovery:\n  backend_config:\n    nats:\n      event_max_age: 0s\n",
        &[],
    );
    assert!(
        shown.contains("backend_config.nats.event_max_age: must be above zero"),
        "{shown}"
    );
}

#[test]
fn the_seeds_flat_backend_config_is_read_as_the_nats_section() {
    let settings = load(
        "service_discovery:\n  backend: nats\n  backend_config:\n    url: nats://10.0.0.5:4222\n    username: svc\n    password: pw\n",
        &[],
    )
    .unwrap();
    assert_eq!(settings.nats.urls, ["nats://10.0.0.5:4222"]);
    assert_eq!(
        settings.nats.auth,
        Some(NatsAuth::UserPassword {
            user: "svc".into(),
            password: "pw".into()
        })
    );
    let token = load(
        "service_discovery:\n  backend_config:\n    url: nats://h:4222\n    token: t0k\n",
        &[],
    )
    .unwrap();
    assert_eq!(token.nats.auth, Some(NatsAuth::Token("t0k".into())));
    let shown = error(
        "service_discovery:\n  backend_config:\n    url: nats://h:4222\n    nats:\n      url: nats://other:4222\n",
        &[],
    );
    assert!(
        shown.contains("either flat") && shown.contains("not both"),
        "{shown}"
    );
}
