//! How mesh instances look in Consul's shapes (`docs/serve.md` has the mapping).
//!
//! A mesh has no nodes: each instance is reported on a node named after its host, at its
//! host's address. Statuses become the status of one check per instance.

use prism_mesh::{InstanceStatus, ServiceInstance};
use serde_json::{json, Map, Value};

/// Metadata key holding the service ID a Consul client registered with (mesh ids are
/// UUIDs; Consul's are free-form).
pub(crate) const CONSUL_ID_KEY: &str = "consul_id";

/// Consul's name for a status: `passing`, `warning` or `critical`.
pub(crate) fn check_status(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Healthy => "passing",
        InstanceStatus::Starting | InstanceStatus::Unknown => "warning",
        InstanceStatus::Unhealthy | InstanceStatus::Stopping | InstanceStatus::Maintenance => {
            "critical"
        }
    }
}

/// The service ID Consul clients see: the ID they registered with, else the mesh id.
pub(crate) fn service_id(instance: &ServiceInstance) -> String {
    match instance.metadata.get(CONSUL_ID_KEY) {
        Some(Value::String(id)) => id.clone(),
        _ => instance.id.to_string(),
    }
}

/// Consul's `Meta`: string values only, so other values are given as JSON text.
fn meta(instance: &ServiceInstance) -> Map<String, Value> {
    instance
        .metadata
        .iter()
        .filter(|(key, _)| *key != CONSUL_ID_KEY)
        .map(|(key, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (key.to_string(), Value::String(text))
        })
        .collect()
}

fn tags(instance: &ServiceInstance) -> Vec<&str> {
    instance.tags.iter().map(|t| t.as_str()).collect()
}

fn weights(instance: &ServiceInstance) -> Value {
    json!({ "Passing": instance.weight, "Warning": 1 })
}

/// One entry of `/v1/catalog/service/{name}`.
pub(crate) fn catalog_entry(instance: &ServiceInstance, datacenter: &str, index: u64) -> Value {
    json!({
        "ID": "",
        "Node": instance.host.as_str(),
        "Address": instance.host.as_str(),
        "Datacenter": datacenter,
        "TaggedAddresses": {},
        "NodeMeta": {},
        "ServiceKind": "",
        "ServiceID": service_id(instance),
        "ServiceName": instance.service.as_str(),
        "ServiceTags": tags(instance),
        "ServiceAddress": instance.host.as_str(),
        "ServicePort": instance.port,
        "ServiceMeta": meta(instance),
        "ServiceWeights": weights(instance),
        "ServiceEnableTagOverride": false,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

/// The checks of an instance: its status as the service's check, and maintenance as
/// Consul reports it (a critical `_service_maintenance` check).
fn checks(instance: &ServiceInstance, index: u64) -> Vec<Value> {
    let id = service_id(instance);
    let check = |check_id: String, name: &str, status: &str, notes: &str| {
        json!({
            "Node": instance.host.as_str(),
            "CheckID": check_id,
            "Name": name,
            "Status": status,
            "Notes": notes,
            "Output": format!("prism-mesh status: {}", instance.status),
            "ServiceID": id,
            "ServiceName": instance.service.as_str(),
            "ServiceTags": tags(instance),
            "Type": "ttl",
            "CreateIndex": index,
            "ModifyIndex": index,
        })
    };
    let mut checks = vec![check(
        format!("service:{id}"),
        &format!("Service '{}' check", instance.service),
        check_status(instance.status),
        "",
    )];
    if instance.status == InstanceStatus::Maintenance {
        checks.push(check(
            format!("_service_maintenance:{id}"),
            "Service Maintenance Mode",
            "critical",
            "in maintenance",
        ));
    }
    checks
}

/// One entry of `/v1/health/service/{name}`.
pub(crate) fn health_entry(instance: &ServiceInstance, datacenter: &str, index: u64) -> Value {
    json!({
        "Node": {
            "ID": "",
            "Node": instance.host.as_str(),
            "Address": instance.host.as_str(),
            "Datacenter": datacenter,
            "TaggedAddresses": {},
            "Meta": {},
            "CreateIndex": index,
            "ModifyIndex": index,
        },
        "Service": {
            "ID": service_id(instance),
            "Service": instance.service.as_str(),
            "Tags": tags(instance),
            "Address": instance.host.as_str(),
            "Meta": meta(instance),
            "Port": instance.port,
            "Weights": weights(instance),
            "EnableTagOverride": false,
            "CreateIndex": index,
            "ModifyIndex": index,
        },
        "Checks": checks(instance, index),
    })
}

/// True when every tag in `wanted` is one of the instance's (Consul's `?tag=` filter).
pub(crate) fn has_tags(instance: &ServiceInstance, wanted: &[String]) -> bool {
    wanted
        .iter()
        .all(|tag| instance.tags.iter().any(|t| t.as_str() == tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consul_client_sees_its_own_service_id_and_string_meta() {
        let instance = ServiceInstance::builder("web", "10.0.0.5", 80)
            .metadata(CONSUL_ID_KEY, "web-1")
            .metadata("canary", true)
            .metadata("version", "2")
            .tag("v2")
            .build()
            .unwrap();
        let entry = catalog_entry(&instance, "dc1", 7);
        assert_eq!(entry["ServiceID"], "web-1");
        assert_eq!(
            entry["ServiceMeta"],
            json!({"canary": "true", "version": "2"})
        );
        assert_eq!(entry["ServiceTags"], json!(["v2"]));
        assert_eq!(entry["ServicePort"], 80);
        assert_eq!(entry["ModifyIndex"], 7);
    }

    #[test]
    fn maintenance_is_a_critical_maintenance_check_beside_the_service_check() {
        let mut instance = ServiceInstance::builder("web", "10.0.0.5", 80)
            .build()
            .unwrap();
        instance.status = InstanceStatus::Maintenance;
        let entry = health_entry(&instance, "dc1", 1);
        let checks = entry["Checks"].as_array().unwrap();
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c["Status"] == "critical"));
        assert!(checks[1]["CheckID"]
            .as_str()
            .unwrap()
            .starts_with("_service_maintenance:"));
        instance.status = InstanceStatus::Healthy;
        let entry = health_entry(&instance, "dc1", 1);
        assert_eq!(entry["Checks"].as_array().unwrap().len(), 1);
        assert_eq!(entry["Checks"][0]["Status"], "passing");
    }
}
