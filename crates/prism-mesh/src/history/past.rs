//! The registry at a past moment: the last complete checkpoint stored before it, then the
//! events stored after that checkpoint up to the moment. Reading costs the checkpoint's
//! size plus the events since it, not the history's length.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use super::{HistoryQuery, PastRegistry};
use crate::error::{ErrorKind, Result};
use crate::protocol::{split_into_parts, CheckpointPart, PROTOCOL_VERSION};
use crate::store::{Locate, Store};

/// The registry as the event stream had made it at `at` (`None`: now).
pub(crate) async fn past_registry(store: &Store, at: Option<SystemTime>) -> Result<PastRegistry> {
    let registry = checkpoint_before(store, at).await?.unwrap_or_default();
    fold_until(store, registry, at).await
}

/// The registry at `from` and at `to`, each from its own nearest checkpoint: the cost does
/// not grow with the time between them.
pub(crate) async fn registry_diff(
    store: &Store,
    from: SystemTime,
    to: SystemTime,
) -> Result<(PastRegistry, PastRegistry)> {
    let before = past_registry(store, Some(from)).await?;
    let after = past_registry(store, Some(to)).await?;
    Ok((before, after))
}

/// Folds the events stored after `registry` (and up to `at`) into it.
async fn fold_until(
    store: &Store,
    mut registry: PastRegistry,
    at: Option<SystemTime>,
) -> Result<PastRegistry> {
    let (first, _) = store.event_bounds().await?;
    if first > registry.up_to() + 1 {
        registry.mark_incomplete();
    }
    let mut query = HistoryQuery::new().after_sequence(registry.up_to());
    if let Some(at) = at {
        query = query.until(at);
    }
    let mut events = store.history(&query).await?;
    while let Some(event) = events.next().await {
        registry.apply(&event?);
    }
    Ok(registry)
}

/// The last complete checkpoint stored before `at` (the last of all for `None`): a part
/// stored at or after `at` names the complete checkpoint it was built from, which is the
/// last one complete before it, since the parts of one checkpoint are consecutive.
async fn checkpoint_before(store: &Store, at: Option<SystemTime>) -> Result<Option<PastRegistry>> {
    let later = match at {
        Some(at) => store.checkpoint_part(Locate::FirstAtOrAfter(at)).await?,
        None => None,
    };
    let first = match later {
        Some((_, _, part)) => part.base,
        None => complete_as_of(store.checkpoint_part(Locate::Last).await?.as_ref()),
    };
    if first == 0 {
        return Ok(None);
    }
    load(store, first).await
}

/// The first sequence of the last complete checkpoint, given the last part stored (0:
/// none): a last part is its own checkpoint's, any other names the base it was built on.
fn complete_as_of(last: Option<&(u64, SystemTime, CheckpointPart)>) -> u64 {
    match last {
        None => 0,
        Some((sequence, _, part)) if part.is_last() => part.first_sequence(*sequence),
        Some((_, _, part)) => part.base,
    }
}

/// Reads the checkpoint whose part 1 is at stream sequence `first`; `None` (logged) when
/// a part is missing or does not belong to it.
async fn load(store: &Store, first: u64) -> Result<Option<PastRegistry>> {
    let gone = |why: String| {
        warn!(
            first,
            "the checkpoint cannot be read ({why}); folding from the stream's start"
        );
        Ok(None)
    };
    let Some((_, _, head)) = store.checkpoint_part(Locate::Sequence(first)).await? else {
        return gone("its first part is gone".to_string());
    };
    if head.part != 1 {
        return gone(format!("sequence {first} holds part {}", head.part));
    }
    let (up_to, parts) = (head.up_to, head.parts);
    let mut instances = head.instances;
    let mut sequence = first;
    for expected in 2..=parts {
        match store.checkpoint_part(Locate::NextAfter(sequence)).await? {
            Some((next, _, part))
                if part.part == expected && part.first == first && part.up_to == up_to =>
            {
                instances.extend(part.instances);
                sequence = next;
            }
            _ => return gone(format!("part {expected} of {parts} is missing")),
        }
    }
    Ok(Some(PastRegistry::from_checkpoint(first, up_to, instances)))
}

/// Writes a checkpoint of the registry as the stream has made it now; the stream sequence
/// of its first part, or `None` when another peer's checkpoint came first.
pub(crate) async fn write_checkpoint(store: &Store) -> Result<Option<u64>> {
    // The last part stored: what this checkpoint's first part must follow, and what names
    // the complete checkpoint to build on.
    let last_part = store.checkpoint_part(Locate::Last).await?;
    let mut expected = last_part.as_ref().map_or(0, |(sequence, _, _)| *sequence);
    let base = match complete_as_of(last_part.as_ref()) {
        0 => None,
        first => load(store, first).await?,
    }
    .unwrap_or_default();
    let base_first = base.checkpoint().unwrap_or(0);
    let (_, last) = store.event_bounds().await?;
    let mut registry = base;
    let mut events = store
        .history(&HistoryQuery::new().after_sequence(registry.up_to()))
        .await?;
    while let Some(event) = events.next().await {
        let event = event?;
        if event.sequence > last {
            break;
        }
        registry.apply(&event);
    }
    let up_to = last.max(registry.up_to());
    let instances: Vec<Arc<_>> = registry.instances().cloned().collect();
    let total = instances.len() as u64;
    let chunks = split_into_parts(instances)?;
    let parts = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    let at = SystemTime::now();
    let mut first = 0;
    for (index, instances) in chunks.into_iter().enumerate() {
        let part = CheckpointPart {
            v: PROTOCOL_VERSION,
            up_to,
            at,
            part: u32::try_from(index + 1).unwrap_or(u32::MAX),
            parts,
            first,
            base: base_first,
            total,
            instances,
        };
        match store.publish_checkpoint_part(&part, expected).await {
            Ok(sequence) => {
                if first == 0 {
                    first = sequence;
                }
                expected = sequence;
            }
            // Another writer's part came first: its checkpoint stands, this one stops.
            Err(e) if e.kind() == ErrorKind::Conflict => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(first))
}
