//! Helpers shared by the benchmark harnesses in `benches/benches/`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A global allocator that counts allocations (every thread; a `realloc` counts as one)
/// and live bytes, so a harness can print allocations per operation and memory per item. A harness installs it with
/// `#[global_allocator] static GLOBAL: CountingAllocator = CountingAllocator;`; every
/// figure of that harness then pays one shared atomic add per allocation.
pub struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

/// Bytes allocated and not yet freed, by the sizes asked for (zero unless
/// [`CountingAllocator`] is installed): what a structure costs, without the allocator's
/// own rounding and headers.
pub fn live_bytes() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Allocations so far in this process (zero unless [`CountingAllocator`] is installed).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

unsafe impl GlobalAlloc for CountingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The value of environment variable `name` as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0.0..=1.0) of `sorted`, which must not be empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// CPU time of the calling thread (`/proc/thread-self/schedstat`, nanoseconds on the CPU).
pub fn thread_cpu() -> Duration {
    schedstat("/proc/thread-self/schedstat")
}

/// CPU time of every thread of process `pid` so far.
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .map(|task| schedstat(&format!("{}/schedstat", task.path().display())))
        .sum()
}

fn schedstat(path: &str) -> Duration {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let nanos = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

/// A nats-server holding the bucket and the event stream as the library makes them, and a
/// JetStream context on it: for harnesses that write records raw, as owners do.
pub async fn server_with_mesh_layout() -> (prism_tests::NatsServer, async_nats::jetstream::Context)
{
    let server = prism_tests::NatsServer::start();
    let url = server.url();
    prism_mesh::Mesh::builder()
        .nats(prism_tests::test_options(&url))
        .connect()
        .await
        .expect("the mesh's bucket and stream")
        .shutdown()
        .await;
    let client = async_nats::connect(&url).await.expect("connect");
    (server, async_nats::jetstream::new(client))
}

/// What an owner writes for `instance` into `bucket` with `ttl`: the subject of its key
/// and its encoded record (for [`put_records`]).
pub fn owner_record(
    bucket: &str,
    instance: prism_mesh::ServiceInstance,
    ttl: Duration,
) -> (String, bytes::Bytes) {
    let subject = format!("$KV.{bucket}.{}", instance.key());
    let record = prism_mesh::protocol::InstanceRecord {
        v: prism_mesh::protocol::PROTOCOL_VERSION,
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        reason: None,
        instance: std::sync::Arc::new(instance),
    };
    (subject, record.encode().expect("a valid record").into())
}

/// Writes each `(subject, record)` as an owner writes its key (with `Nats-TTL: ttl`,
/// acknowledged), `in_flight` at a time.
pub async fn put_records(
    js: &async_nats::jetstream::Context,
    records: Vec<(String, bytes::Bytes)>,
    ttl: Duration,
    in_flight: usize,
) {
    use futures::StreamExt;
    futures::stream::iter(records)
        .map(|(subject, payload)| async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                prism_mesh::protocol::headers::NATS_TTL,
                prism_mesh::protocol::ttl_header_value(ttl),
            );
            js.publish_with_headers(subject, headers, payload)
                .await
                .expect("publish")
                .await
                .expect("acknowledged");
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await;
}
