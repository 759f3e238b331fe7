//! Shared strings: an immutable string behind a reference count, so the many instances of
//! a view that name the same service, zone, scheme or tag hold one copy of it.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use foldhash::HashSet as FastSet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable, cheaply cloned string.
///
/// It reads like a `&str` (it derefs to one, compares with `str`, `&str` and `String`,
/// displays as itself) and travels as a plain string on the wire. A peer's view keeps one
/// copy of each service name, scheme, zone, tag and metadata key, whatever the number of
/// instances that carry it.
///
/// ```
/// use prism_mesh::SharedStr;
///
/// let zone = SharedStr::from("eu-west-1a");
/// assert_eq!(zone, "eu-west-1a");
/// assert!(zone.starts_with("eu-"));
/// let copy = zone.clone(); // a reference count, not a copy of the bytes
/// assert_eq!(copy.to_string(), "eu-west-1a");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when both are the same allocation (not merely equal).
    pub(crate) fn ptr_eq(&self, other: &SharedStr) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for SharedStr {
    fn default() -> Self {
        SharedStr(Arc::from(""))
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

// Hashes as the `str` it holds, so maps keyed by it can be searched with a `&str`.
impl Hash for SharedStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(Arc::from(s))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(Arc::from(s))
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> Self {
        SharedStr(Arc::from(s.as_str()))
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.0.to_string()
    }
}

macro_rules! eq_with {
    ($($other:ty),*) => {$(
        impl PartialEq<$other> for SharedStr {
            fn eq(&self, other: &$other) -> bool {
                self.as_str() == AsRef::<str>::as_ref(other)
            }
        }
        impl PartialEq<SharedStr> for $other {
            fn eq(&self, other: &SharedStr) -> bool {
                AsRef::<str>::as_ref(self) == other.as_str()
            }
        }
    )*};
}
eq_with!(str, &str, String);

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SharedStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            // Borrowed or not, the bytes are copied once, into the shared allocation.
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SharedStr, E> {
                Ok(SharedStr::from(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SharedStr, E> {
                std::str::from_utf8(v)
                    .map(SharedStr::from)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(v), &self))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// One copy of each string a view holds: equal strings decoded from different records
/// become one allocation. Strings no instance holds any more are dropped as the set grows.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    strings: FastSet<SharedStr>,
    /// The size at which unused strings are next swept out.
    sweep_at: usize,
}

/// The smallest set an interner sweeps.
const SWEEP_FLOOR: usize = 1024;

impl Interner {
    /// The shared copy of `s`, replacing `s` with it.
    pub(crate) fn intern(&mut self, s: &mut SharedStr) {
        if let Some(held) = self.strings.get(s.as_str()) {
            if !held.ptr_eq(s) {
                *s = held.clone();
            }
            return;
        }
        if self.strings.len() >= self.sweep_at.max(SWEEP_FLOOR) {
            // Only the set holds a string with a count of one: no instance uses it.
            self.strings.retain(|s| Arc::strong_count(&s.0) > 1);
            self.sweep_at = self.strings.len() * 2;
        }
        self.strings.insert(s.clone());
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.strings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_interned_become_one_allocation() {
        let mut interner = Interner::default();
        let mut a = SharedStr::from(String::from("orders"));
        let mut b = SharedStr::from(String::from("orders"));
        assert!(!a.ptr_eq(&b));
        interner.intern(&mut a);
        interner.intern(&mut b);
        assert!(a.ptr_eq(&b));
        assert_eq!(interner.len(), 1);
    }

    #[test]
    fn strings_no_one_holds_are_swept_as_the_set_grows() {
        let mut interner = Interner::default();
        let mut kept = SharedStr::from("kept");
        interner.intern(&mut kept);
        for n in 0..10 * SWEEP_FLOOR {
            interner.intern(&mut SharedStr::from(format!("dropped-{n}")));
        }
        assert!(interner.len() <= 2 * SWEEP_FLOOR, "{} held", interner.len());
        let mut again = SharedStr::from("kept");
        interner.intern(&mut again);
        assert!(again.ptr_eq(&kept), "a string still in use stays shared");
    }

    #[test]
    fn compares_and_travels_as_a_plain_string() {
        let s = SharedStr::from("eu-west-1a");
        assert_eq!(s, "eu-west-1a");
        assert_eq!("eu-west-1a", s);
        assert_eq!(s, String::from("eu-west-1a"));
        let bytes = rmp_serde::to_vec(&s).unwrap();
        assert_eq!(bytes, rmp_serde::to_vec("eu-west-1a").unwrap());
        let back: SharedStr = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"eu-west-1a\"");
    }
}
