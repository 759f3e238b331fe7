//! Limits the wire protocol sets on an instance, checked before any network call.

use super::ServiceInstance;
use crate::error::{Error, Result};

/// Longest accepted service name, in bytes.
pub const MAX_SERVICE_NAME_LEN: usize = 128;
/// Longest accepted host, in bytes.
pub const MAX_HOST_LEN: usize = 253;
/// Largest accepted metadata map, measured as its MessagePack encoding.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Most tags an instance may carry.
pub const MAX_TAGS: usize = 64;
/// Longest accepted tag, in bytes.
pub const MAX_TAG_LEN: usize = 256;
/// Deepest accepted nesting of arrays and objects inside one metadata value (`1` and
/// `"x"` have depth 0, `[1]` depth 1, `{"a": [1]}` depth 2). Readers refuse payloads nested
/// deeper than records with this limit can be (see `protocol::MAX_PAYLOAD_DEPTH`): decoding
/// recurses once per level, and a hostile payload nested a hundred thousand levels deep
/// would otherwise overflow the stack and abort the process.
pub const MAX_METADATA_DEPTH: usize = 32;

/// Checks that `name` is usable as one NATS subject token and KV key part:
/// ASCII letters, digits, `-` and `_`, 1 to 128 bytes.
///
/// ```
/// use prism_mesh::validate_service_name;
///
/// assert!(validate_service_name("billing-api").is_ok());
/// let err = validate_service_name("billing.api").unwrap_err();
/// assert!(err.to_string().contains("'.'"));
/// ```
pub fn validate_service_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("service name is empty"));
    }
    if name.len() > MAX_SERVICE_NAME_LEN {
        return Err(Error::invalid(format!(
            "service name is {} bytes long; the limit is {MAX_SERVICE_NAME_LEN}",
            name.len()
        )));
    }
    if let Some((position, bad)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        let why = match bad {
            '.' => " (it separates NATS subject tokens)",
            '*' | '>' => " (it is a NATS subject wildcard)",
            c if c.is_whitespace() => " (whitespace ends a NATS subject)",
            _ => "",
        };
        return Err(Error::invalid(format!(
            "service name {name:?} contains {bad:?} at byte {position}{why}; \
             allowed are ASCII letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

pub(super) fn validate_instance(
    instance: &ServiceInstance,
    check_metadata_size: bool,
) -> Result<()> {
    validate_service_name(&instance.service)?;
    if instance.host.is_empty() {
        return Err(Error::invalid(format!(
            "instance of {:?} has an empty host",
            instance.service
        )));
    }
    if instance.host.len() > MAX_HOST_LEN {
        return Err(Error::invalid(format!(
            "host is {} bytes long; the limit is {MAX_HOST_LEN}",
            instance.host.len()
        )));
    }
    if instance.scheme.is_empty()
        || !instance
            .scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(Error::invalid(format!(
            "scheme {:?} is not a URL scheme",
            instance.scheme
        )));
    }
    if instance.tags.len() > MAX_TAGS {
        return Err(Error::invalid(format!(
            "instance has {} tags; the limit is {MAX_TAGS}",
            instance.tags.len()
        )));
    }
    if let Some(tag) = instance
        .tags
        .iter()
        .find(|t| t.is_empty() || t.len() > MAX_TAG_LEN)
    {
        return Err(Error::invalid(format!(
            "tag {tag:?} must be 1 to {MAX_TAG_LEN} bytes long"
        )));
    }
    if let Some(zone) = &instance.zone {
        if zone.is_empty() || zone.len() > MAX_TAG_LEN {
            return Err(Error::invalid(format!(
                "zone {zone:?} must be 1 to {MAX_TAG_LEN} bytes long"
            )));
        }
    }
    if let Some((key, depth)) = instance
        .metadata
        .iter()
        .map(|(key, value)| (key, nesting_depth(value)))
        .find(|(_, depth)| *depth > MAX_METADATA_DEPTH)
    {
        return Err(Error::invalid(format!(
            "metadata value {key:?} is nested {depth} levels deep; the limit is {MAX_METADATA_DEPTH}"
        )));
    }
    if !check_metadata_size {
        return Ok(());
    }
    let metadata_bytes = rmp_serde::to_vec_named(&instance.metadata)
        .map_err(|e| {
            Error::with_source(
                crate::ErrorKind::InvalidInput,
                "metadata cannot be encoded",
                e,
            )
        })?
        .len();
    if metadata_bytes > MAX_METADATA_BYTES {
        return Err(Error::invalid(format!(
            "metadata of {}/{} is {metadata_bytes} bytes encoded; the limit is {MAX_METADATA_BYTES} bytes",
            instance.service, instance.id
        )));
    }
    Ok(())
}

/// Nesting depth of arrays and objects in `value`, without recursion (a value built in
/// memory can be nested arbitrarily deep).
fn nesting_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_subject_syntax_are_rejected_naming_the_character() {
        for (name, bad) in [
            ("a.b", "'.'"),
            ("a*", "'*'"),
            ("a>", "'>'"),
            ("a b", "' '"),
            ("é", "'é'"),
        ] {
            let message = validate_service_name(name).unwrap_err().to_string();
            assert!(message.contains(bad), "{name}: {message}");
        }
        assert!(validate_service_name("").is_err());
        assert!(validate_service_name(&"x".repeat(129)).is_err());
        assert!(validate_service_name("Orders_v2-eu").is_ok());
    }

    #[test]
    fn oversized_metadata_is_rejected_with_its_size() {
        let err = ServiceInstance::builder("svc", "h", 1)
            .metadata("blob", "x".repeat(MAX_METADATA_BYTES))
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("limit is 16384"), "{err}");
    }

    #[test]
    fn metadata_nested_too_deep_is_rejected_with_its_depth() {
        let nested = |levels: usize| {
            let mut value = serde_json::json!(1);
            for _ in 0..levels {
                value = serde_json::Value::Array(vec![value]);
            }
            value
        };
        assert_eq!(nesting_depth(&serde_json::json!({"a": [1]})), 2);
        assert_eq!(nesting_depth(&serde_json::json!("x")), 0);
        assert!(ServiceInstance::builder("svc", "h", 1)
            .metadata("deep", nested(MAX_METADATA_DEPTH))
            .build()
            .is_ok());
        let err = ServiceInstance::builder("svc", "h", 1)
            .metadata("deep", nested(MAX_METADATA_DEPTH + 1))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("nested 33 levels deep"), "{err}");
        // Far deeper than any stack would take recursively.
        let mut instance = ServiceInstance::builder("svc", "h", 1).build().unwrap();
        instance.metadata.insert("deep", nested(200_000));
        assert!(instance.validate().is_err());
        // Dropping it must not recurse 200,000 levels either.
        let mut value = instance.metadata.remove("deep").unwrap();
        while let serde_json::Value::Array(mut items) = value {
            value = items.pop().unwrap_or_default();
        }
    }

    #[test]
    fn weight_in_metadata_sets_the_weight() {
        let instance = ServiceInstance::builder("svc", "h", 1)
            .metadata("weight", 7)
            .build()
            .unwrap();
        assert_eq!(instance.weight, 7);
    }
}
