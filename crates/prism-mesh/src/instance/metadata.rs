//! Instance metadata: a small map of string keys to JSON-like values, stored as one sorted
//! vector behind a single pointer (a tree map's node costs hundreds of bytes for the few
//! entries an instance has, and an instance without metadata pays for the pointer only).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use thin_vec::ThinVec;

use super::shared::{Interner, SharedStr};

/// Free-form metadata: string keys, JSON-like values, ordered by key.
///
/// Reads like a map (`get`, `contains_key`, `iter`, `len`, indexing by key) and travels as
/// one on the wire. Lookups are binary searches, writes shift entries: metadata is small.
///
/// ```
/// use prism_mesh::Metadata;
///
/// let mut metadata = Metadata::new();
/// metadata.insert("region", "eu-west-1");
/// metadata.insert("canary", false);
/// assert_eq!(metadata["region"], "eu-west-1");
/// assert_eq!(metadata.get("canary"), Some(&serde_json::Value::Bool(false)));
/// assert_eq!(metadata.keys().collect::<Vec<_>>(), ["canary", "region"]);
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct Metadata {
    entries: ThinVec<(SharedStr, Value)>,
}

impl Metadata {
    /// An empty map.
    pub fn new() -> Self {
        Metadata::default()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.position(key).ok().map(|at| &self.entries[at].1)
    }

    /// True when `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key` to `value`, returning the value it replaces.
    pub fn insert(&mut self, key: impl Into<SharedStr>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.position(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let at = self.position(key).ok()?;
        Some(self.entries.remove(at).1)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, ordered by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// A copy as a tree map.
    pub fn to_map(&self) -> BTreeMap<String, Value> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// Shares the keys with every other instance of the view that uses them.
    pub(crate) fn intern(&mut self, interner: &mut Interner) {
        for (key, _) in self.entries.iter_mut() {
            interner.intern(key);
        }
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&str> for Metadata {
    type Output = Value;

    /// The value of `key`; panics when there is none, like a map's index.
    fn index(&self, key: &str) -> &Value {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no metadata entry {key:?}"),
        }
    }
}

impl<K: Into<SharedStr>, V: Into<Value>> FromIterator<(K, V)> for Metadata {
    /// Collects entries; of two with the same key, the later wins.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(SharedStr, Value)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Stable: equal keys keep their order, and the last of each run is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: ThinVec<(SharedStr, Value)> = ThinVec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        kept.shrink_to_fit();
        Metadata { entries: kept }
    }
}

impl From<BTreeMap<String, Value>> for Metadata {
    fn from(map: BTreeMap<String, Value>) -> Self {
        // Already sorted and unique.
        Metadata {
            entries: map.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (SharedStr, Value)>,
        fn(&'a (SharedStr, Value)) -> (&'a str, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in self.entries.iter() {
            map.serialize_entry(k.as_str(), v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of string keys to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Metadata, A::Error> {
                let mut entries: Vec<(SharedStr, Value)> =
                    Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = access.next_entry::<SharedStr, Value>()? {
                    entries.push((k, v));
                }
                Ok(entries.into_iter().collect())
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_sorted_and_unique_whatever_the_order_of_writes() {
        let mut m = Metadata::new();
        assert_eq!(m.insert("b", 2), None);
        assert_eq!(m.insert("a", 1), None);
        assert_eq!(m.insert("c", 3), None);
        assert_eq!(m.insert("b", 20), Some(Value::from(2)));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(m["b"], 20);
        assert_eq!(m.remove("a"), Some(Value::from(1)));
        assert_eq!(m.remove("a"), None);
        assert_eq!(m.len(), 2);
        let collected: Metadata = [("x", 1), ("y", 2), ("x", 3)].into_iter().collect();
        assert_eq!(collected.len(), 2);
        assert_eq!(collected["x"], 3, "the later of two equal keys wins");
    }

    #[test]
    fn travels_as_the_map_it_reads_as() {
        let m: Metadata = [
            ("version", Value::from("2.1")),
            ("canary", Value::from(false)),
        ]
        .into_iter()
        .collect();
        let map = m.to_map();
        assert_eq!(
            rmp_serde::to_vec_named(&m).unwrap(),
            rmp_serde::to_vec_named(&map).unwrap()
        );
        let back: Metadata =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&map).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        // A map with a key twice on the wire reads as a tree map would: the last wins.
        let twice: Metadata = serde_json::from_str(r#"{"k": 1, "k": 2}"#).unwrap();
        assert_eq!(twice.len(), 1);
        assert_eq!(twice["k"], 2);
    }
}
