//! The deployment files stay valid: docker-compose.yml parses and everything it mounts or
//! builds exists, and nats-server itself accepts every shipped configuration.

use std::path::{Path, PathBuf};
use std::process::Command;

use prism_tests::nats_server_bin;
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn server_accepts(config: &Path, env: &[(&str, &str)]) {
    let output = Command::new(nats_server_bin())
        .arg("-t")
        .arg("-c")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("run nats-server -t");
    assert!(
        output.status.success(),
        "nats-server rejects {}: {}{}",
        config.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn docker_compose_parses_and_everything_it_mounts_or_builds_exists() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut compose: Value = serde_yaml_ng::from_str(&text).expect("docker-compose.yml is YAML");
    compose.apply_merge().expect("merge keys resolve");
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().filter_map(Value::as_str).collect();
    for wanted in ["nats-1", "nats-2", "nats-3", "orders", "users", "watch"] {
        assert!(
            names.contains(&wanted),
            "service {wanted} missing from {names:?}"
        );
    }
    let mut mounts = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            let host = spec.split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(
                    repo().join(host).exists(),
                    "{name} mounts {host}, which does not exist"
                );
                mounts += 1;
            }
        }
        if let Some(context) = service["build"].as_str() {
            assert!(
                repo().join(context).join("Dockerfile").exists(),
                "{name} builds without a Dockerfile"
            );
        }
        if service["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("nats:"))
        {
            let tag = service["image"]
                .as_str()
                .unwrap()
                .trim_start_matches("nats:");
            let version: Vec<u32> = tag
                .split(['.', '-'])
                .take(2)
                .filter_map(|p| p.parse().ok())
                .collect();
            assert!(
                version >= vec![2, 12],
                "{name} runs nats {tag}; per-key TTLs need >= 2.11.2"
            );
        }
    }
    assert!(
        mounts >= 6,
        "expected the nats and prism config mounts, found {mounts}"
    );
}

#[test]
fn nats_server_accepts_every_shipped_configuration() {
    server_accepts(&repo().join("nats/nats-server.conf"), &[]);
    for node in ["nats-1", "nats-2", "nats-3"] {
        server_accepts(
            &repo().join("nats/cluster/docker.conf"),
            &[("SERVER_NAME", node)],
        );
    }
    // The loopback template, filled in the way the harness fills it.
    let dir = tempfile::tempdir().unwrap();
    let filled = std::fs::read_to_string(repo().join("nats/cluster/loopback.conf"))
        .unwrap()
        .replace("{{NAME}}", "n1")
        .replace("{{CLIENT_PORT}}", "14222")
        .replace("{{CLUSTER_PORT}}", "16222")
        .replace("{{STORE_DIR}}", &dir.path().display().to_string())
        .replace("{{ROUTES}}", "nats-route://127.0.0.1:16222");
    let path = dir.path().join("node.conf");
    std::fs::write(&path, filled).unwrap();
    server_accepts(&path, &[]);
}
