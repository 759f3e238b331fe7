//! `prism_mesh._native`: the Rust mesh for Python. The package's `__init__.py` gives it
//! MarketPrism's API; this module holds the client, instances as Python objects (built once
//! per snapshot of a service, so `discover()` does not convert anything twice), the event
//! pump that feeds Python handlers through a bounded queue, and errors with their kind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use prism_mesh::settings::DiscoverySettings;
use prism_mesh::{
    DiscoveryClient, Error, InstanceStatus, MeshEvent, Metadata, ServiceInstance, ServiceSnapshot,
};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyList};
use pyo3::BoundObject;
use tokio::sync::mpsc;
use tracing::warn;

create_exception!(
    _native,
    PrismError,
    PyException,
    "An error of the mesh: `kind` names what went wrong (`invalid input`, `connection failed`, ...)."
);

/// A Python `PrismError` with `message` and `.kind`.
fn prism_error(message: String, kind: prism_mesh::ErrorKind) -> PyErr {
    Python::with_gil(|py| {
        let err = PrismError::new_err(message);
        let _ = err.value(py).setattr("kind", kind.to_string());
        err
    })
}

/// A Python `PrismError` from a mesh error: the message, and its kind as `.kind`.
fn py_error(e: Error) -> PyErr {
    prism_error(e.to_string(), e.kind())
}

/// A `PrismError` of kind `invalid input`, for what Python passed in.
fn invalid_input(message: impl Into<String>) -> PyErr {
    prism_error(message.into(), prism_mesh::ErrorKind::InvalidInput)
}

/// The Python `ServiceStatus` enum, handed over by the package when it loads.
static STATUS_ENUM: GILOnceCell<Py<PyAny>> = GILOnceCell::new();

#[pyfunction]
fn _set_status_enum(py: Python<'_>, status: Py<PyAny>) {
    let _ = STATUS_ENUM.set(py, status);
}

/// The package's `_resolve(future, ok, value)`, which settles an asyncio future unless it
/// was cancelled; handed over when the package loads.
static RESOLVE: GILOnceCell<Py<PyAny>> = GILOnceCell::new();

#[pyfunction]
fn _set_resolver(py: Python<'_>, resolve: Py<PyAny>) {
    let _ = RESOLVE.set(py, resolve);
}

/// Runs `fut` on the Rust runtime and returns an asyncio future of its result.
///
/// One spawn, and the GIL taken once, at the end, to hand the result to the event loop
/// (`call_soon_threadsafe`): a generic bridge spawns twice and takes the GIL three times
/// per call, and each of those waits for the event loop's thread to let go of it.
fn bridge<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: std::future::Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let Some(resolve) = RESOLVE.get(py) else {
        return pyo3_async_runtimes::tokio::future_into_py(py, fut);
    };
    let resolve = resolve.clone_ref(py);
    let event_loop = pyo3_async_runtimes::get_running_loop(py)?;
    let future = event_loop.call_method0("create_future")?;
    let (loop_ref, future_ref) = (event_loop.unbind(), future.clone().unbind());
    pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
        let result = fut.await;
        Python::with_gil(move |py| {
            let (ok, value) = match result.and_then(|v| {
                v.into_pyobject(py)
                    .map(|o| o.into_bound().into_any().unbind())
                    .map_err(Into::into)
            }) {
                Ok(value) => (true, value),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            let call = loop_ref
                .bind(py)
                .call_method1("call_soon_threadsafe", (resolve, future_ref, ok, value));
            if let Err(e) = call {
                // The loop is closed: nobody is waiting any more.
                tracing::debug!(error = %e, "a result arrived after its event loop closed");
            }
        });
    });
    Ok(future)
}

fn status_object(py: Python<'_>, status: InstanceStatus) -> PyResult<PyObject> {
    match STATUS_ENUM.get(py) {
        Some(class) => Ok(class.call1(py, (status.as_str(),))?),
        None => Ok(status.as_str().into_pyobject(py)?.into_any().unbind()),
    }
}

/// A JSON value as the Python value `json.loads` would give.
fn to_py(py: Python<'_>, value: &serde_json::Value) -> PyResult<PyObject> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.into_pyobject(py)?.into_any().unbind(),
            (None, Some(u), _) => u.into_pyobject(py)?.into_any().unbind(),
            (_, _, Some(f)) => f.into_pyobject(py)?.into_any().unbind(),
            _ => py.None(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

/// One running copy of a service, as the mesh sees it (read-only).
#[pyclass(frozen, name = "ServiceInstance", module = "prism_mesh")]
struct PyInstance {
    inner: Arc<ServiceInstance>,
}

#[pymethods]
impl PyInstance {
    /// The service name.
    #[getter]
    fn service_name(&self) -> &str {
        &self.inner.service
    }
    /// The instance id (a UUID).
    #[getter]
    fn instance_id(&self) -> String {
        self.inner.id.to_string()
    }
    #[getter]
    fn host(&self) -> &str {
        &self.inner.host
    }
    #[getter]
    fn port(&self) -> u16 {
        self.inner.port
    }
    #[getter]
    fn scheme(&self) -> &str {
        &self.inner.scheme
    }
    /// `scheme://host:port`.
    #[getter]
    fn base_url(&self) -> String {
        self.inner.base_url()
    }
    /// `host:port`.
    #[getter]
    fn address(&self) -> String {
        format!("{}:{}", self.inner.host, self.inner.port)
    }
    /// A `ServiceStatus`.
    #[getter]
    fn status(&self, py: Python<'_>) -> PyResult<PyObject> {
        status_object(py, self.inner.status)
    }
    /// A new dict each time.
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<PyObject> {
        let dict = PyDict::new(py);
        for (k, v) in self.inner.metadata.iter() {
            dict.set_item(k, to_py(py, v)?)?;
        }
        Ok(dict.into_any().unbind())
    }
    #[getter]
    fn tags(&self) -> Vec<String> {
        self.inner.tags.iter().map(|t| t.to_string()).collect()
    }
    #[getter]
    fn weight(&self) -> u32 {
        self.inner.weight
    }
    #[getter]
    fn zone(&self) -> Option<&str> {
        self.inner.zone.as_deref()
    }
    /// Seconds since the epoch.
    #[getter]
    fn registered_at(&self) -> f64 {
        self.inner.registered_at.as_millis() as f64 / 1000.0
    }
    /// Seconds since the epoch.
    #[getter]
    fn updated_at(&self) -> f64 {
        self.inner.updated_at.as_millis() as f64 / 1000.0
    }
    fn is_healthy(&self) -> bool {
        self.inner.status == InstanceStatus::Healthy
    }
    /// Every field as a dict (status as its string).
    fn to_dict(&self, py: Python<'_>) -> PyResult<PyObject> {
        let value = serde_json::to_value(&*self.inner).unwrap_or_default();
        let dict = to_py(py, &value)?;
        let dict = dict.bind(py);
        dict.set_item("service_name", self.service_name())?;
        dict.set_item("instance_id", self.instance_id())?;
        dict.set_item("base_url", self.base_url())?;
        Ok(dict.clone().unbind())
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .downcast::<PyInstance>()
            .is_ok_and(|o| *o.get().inner == *self.inner)
    }
    fn __hash__(&self) -> u64 {
        self.inner.id.as_u64_pair().0
    }
    fn __repr__(&self) -> String {
        format!(
            "ServiceInstance(service_name={:?}, instance_id={:?}, base_url={:?}, status={:?})",
            self.inner.service.as_str(),
            self.inner.id.to_string(),
            self.inner.base_url(),
            self.inner.status.as_str()
        )
    }
}

fn instance_object(py: Python<'_>, instance: Arc<ServiceInstance>) -> PyResult<PyObject> {
    Ok(Py::new(py, PyInstance { inner: instance })?.into_any())
}

/// What a `discover` of one service last built: the snapshot and its Python list.
type Built = (Arc<ServiceSnapshot>, Py<PyList>);

/// A connected client (`ServiceDiscoveryClient` wraps it).
#[pyclass(frozen, module = "prism_mesh._native")]
struct Client {
    inner: Arc<DiscoveryClient>,
    built: Mutex<HashMap<String, Built>>,
}

fn parse_metadata(json: &str) -> PyResult<Metadata> {
    let map: std::collections::BTreeMap<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|e| invalid_input(format!("metadata is not a JSON object: {e}")))?;
    Ok(Metadata::from(map))
}

fn parse_status(status: &str) -> PyResult<InstanceStatus> {
    status.parse().map_err(py_error)
}

/// Connects as a `service_discovery` configuration says (the seed's dict, as JSON).
#[pyfunction]
fn connect(py: Python<'_>, config_json: String) -> PyResult<Bound<'_, PyAny>> {
    bridge(py, async move {
        let text = format!("{{\"service_discovery\": {config_json}}}");
        let env = |name: &str| std::env::var(name).ok();
        let settings =
            DiscoverySettings::from_yaml_str(&text, "the config dict", &env).map_err(py_error)?;
        let client = DiscoveryClient::from_settings(&settings)
            .await
            .map_err(py_error)?;
        Ok(Client {
            inner: Arc::new(client),
            built: Mutex::new(HashMap::new()),
        })
    })
}

#[pymethods]
impl Client {
    /// Registers this process; returns its `ServiceInstance`.
    fn register_myself<'py>(
        &self,
        py: Python<'py>,
        service_name: String,
        host: String,
        port: u16,
        metadata_json: String,
        tags: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        let metadata = parse_metadata(&metadata_json)?;
        bridge(py, async move {
            let instance = client
                .register_myself(&service_name, &host, port, metadata, tags)
                .await
                .map_err(py_error)?;
            Python::with_gil(|py| instance_object(py, instance))
        })
    }

    /// Registers another instance (not "myself"); returns it. (The arguments are the
    /// seed's `register_service`.)
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (service_name, host, port, metadata_json, tags, instance_id=None))]
    fn register_service<'py>(
        &self,
        py: Python<'py>,
        service_name: String,
        host: String,
        port: u16,
        metadata_json: String,
        tags: Vec<String>,
        instance_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        let metadata = parse_metadata(&metadata_json)?;
        let id = match instance_id {
            None => None,
            Some(id) => Some(uuid::Uuid::try_parse(&id).map_err(|_| {
                invalid_input(format!(
                    "instance_id {id:?} is not a UUID (mesh instance ids are UUIDs)"
                ))
            })?),
        };
        bridge(py, async move {
            let mut builder =
                ServiceInstance::builder(service_name, host, port).metadata_map(metadata);
            for tag in tags {
                builder = builder.tag(tag);
            }
            if let Some(id) = id {
                builder = builder.id(id);
            }
            let instance = builder.build().map_err(py_error)?;
            let registration = client.register_instance(instance).await.map_err(py_error)?;
            Python::with_gil(|py| instance_object(py, registration.instance()))
        })
    }

    /// The instances of `service_name` in the view, any status (a new list).
    fn discover(&self, py: Python<'_>, service_name: &str) -> PyResult<PyObject> {
        let snapshot = self.inner.mesh().service(service_name).load();
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, list)) = built.get(service_name) {
            if Arc::ptr_eq(at, &snapshot) {
                let list = list.bind(py);
                return Ok(list.get_slice(0, list.len()).into_any().unbind());
            }
        }
        let list = PyList::empty(py);
        for instance in snapshot.iter() {
            list.append(instance_object(py, instance.clone())?)?;
        }
        let copy = list.get_slice(0, list.len());
        built.insert(service_name.to_string(), (snapshot, list.unbind()));
        Ok(copy.into_any().unbind())
    }

    /// One instance by the load balancer (weighted round robin), or None.
    fn get_service(&self, py: Python<'_>, service_name: &str) -> PyResult<PyObject> {
        match self.inner.get_service(service_name) {
            Ok(instance) => instance_object(py, instance),
            Err(e) if e.kind() == prism_mesh::ErrorKind::Unavailable => Ok(py.None()),
            Err(e) => Err(py_error(e)),
        }
    }

    /// Names of services with at least one instance.
    fn service_names(&self) -> Vec<String> {
        self.inner.list_all_services()
    }

    /// This process's own status.
    fn update_my_status<'py>(&self, py: Python<'py>, status: &str) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        let status = parse_status(status)?;
        bridge(py, async move {
            let instance = client.update_my_status(status).await.map_err(py_error)?;
            Python::with_gil(|py| instance_object(py, instance))
        })
    }

    fn deregister_myself<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        bridge(py, async move {
            client.deregister_myself().await.map_err(py_error)
        })
    }

    /// Checks an instance's health endpoint now; True when it passes.
    fn health_check_service<'py>(
        &self,
        py: Python<'py>,
        service_name: String,
        instance_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        let id = uuid::Uuid::try_parse(&instance_id)
            .map_err(|_| invalid_input(format!("instance_id {instance_id:?} is not a UUID")))?;
        bridge(py, async move {
            let result = client
                .mesh()
                .health_check_service(&service_name, id, Duration::from_secs(10))
                .await
                .map_err(py_error)?;
            Ok(result.passing)
        })
    }

    /// Maintenance, drain, deregistration (when `auto_deregister`), and the end.
    fn shutdown<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        bridge(py, async move {
            client.shutdown().await;
            Ok(())
        })
    }

    /// Closes without deregistering: this process's instances expire at their TTL, as if
    /// it had died (for tests and for handing instances over).
    fn shutdown_without_deregistering<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        bridge(py, async move {
            client.mesh().close_without_deregistering().await;
            Ok(())
        })
    }

    /// Lifecycle events through a queue of `capacity`: when handlers fall that far
    /// behind, further events are dropped, counted and logged, never buffered without
    /// bound.
    fn events(&self, capacity: usize) -> EventPump {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut stream = self.inner.events();
        let counter = dropped.clone();
        pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
            while let Some(event) = stream.next().await {
                match tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                        if n == 1 || n.is_power_of_two() {
                            warn!(dropped = n, "event handlers are too slow: events dropped");
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        EventPump {
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            dropped,
        }
    }

    /// For the benchmark: `count` registrations made from Rust one after another, each
    /// round trip's seconds (what `register_service` from Python is compared with).
    fn _bench_rust_registrations<'py>(
        &self,
        py: Python<'py>,
        count: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        bridge(py, async move {
            let mut times = Vec::with_capacity(count);
            for n in 0..count {
                let port = u16::try_from(n % 60000).unwrap_or(0);
                let instance = ServiceInstance::builder("bench-rust", "127.0.0.1", port)
                    .build()
                    .map_err(py_error)?;
                let began = std::time::Instant::now();
                client.register_instance(instance).await.map_err(py_error)?;
                times.push(began.elapsed().as_secs_f64());
            }
            Ok(times)
        })
    }

    /// For the benchmark: `count` status changes of the instances this client registered
    /// with `register_service` (round robin), at `rate` per second, from Rust.
    fn _bench_status_churn<'py>(
        &self,
        py: Python<'py>,
        count: usize,
        rate: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        bridge(py, async move {
            let owned = client.mesh().registrations();
            if owned.is_empty() {
                return Err(invalid_input("register instances first"));
            }
            let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
            let start = tokio::time::Instant::now();
            // One write in flight per instance, so every write changes its status.
            let mut in_flight: Vec<Option<tokio::task::JoinHandle<prism_mesh::Result<_>>>> =
                owned.iter().map(|_| None).collect();
            for n in 0..count {
                tokio::time::sleep_until(start + interval * u32::try_from(n).unwrap_or(u32::MAX))
                    .await;
                let slot = n % owned.len();
                if let Some(previous) = in_flight[slot].take() {
                    previous
                        .await
                        .map_err(|e| invalid_input(e.to_string()))?
                        .map_err(py_error)?;
                }
                let registration = owned[slot].clone();
                let status = if (n / owned.len()) % 2 == 0 {
                    InstanceStatus::Unhealthy
                } else {
                    InstanceStatus::Healthy
                };
                in_flight[slot] = Some(tokio::spawn(async move {
                    registration.set_status(status, None).await
                }));
            }
            for write in in_flight.into_iter().flatten() {
                write
                    .await
                    .map_err(|e| invalid_input(e.to_string()))?
                    .map_err(py_error)?;
            }
            Ok(start.elapsed().as_secs_f64())
        })
    }

    /// For the benchmark: an async call that does nothing, to measure the bridge between
    /// asyncio and the Rust runtime.
    fn _bench_noop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        bridge(py, async move { Ok(()) })
    }

    /// The mesh's metrics in Prometheus' text format.
    fn metrics(&self) -> String {
        self.inner.mesh().render_metrics()
    }
}

/// Events for Python handlers, in batches.
#[pyclass(frozen, module = "prism_mesh._native")]
struct EventPump {
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<MeshEvent>>>,
    dropped: Arc<AtomicU64>,
}

/// `(kind, instance, previous, old_status, new_status, reason)`.
fn event_tuple(py: Python<'_>, event: MeshEvent) -> PyResult<PyObject> {
    let none = || py.None();
    let (kind, instance, previous, old, new, reason) = match event {
        MeshEvent::Registered { instance } => {
            ("service_registered", instance, None, None, None, None)
        }
        MeshEvent::Updated {
            previous,
            instance,
            reason,
        } => (
            "service_updated",
            instance,
            Some(previous),
            None,
            None,
            reason,
        ),
        MeshEvent::StatusChanged {
            instance,
            previous,
            current,
            reason,
        } => (
            "service_status_changed",
            instance,
            None,
            Some(previous),
            Some(current),
            reason,
        ),
        MeshEvent::Deregistered { instance, reason } => {
            ("service_deregistered", instance, None, None, None, reason)
        }
        MeshEvent::Expired { instance } => ("service_expired", instance, None, None, None, None),
    };
    let previous = match previous {
        Some(p) => instance_object(py, p)?,
        None => none(),
    };
    let old = match old {
        Some(s) => status_object(py, s)?,
        None => none(),
    };
    let new = match new {
        Some(s) => status_object(py, s)?,
        None => none(),
    };
    let tuple = (
        kind,
        instance_object(py, instance)?,
        previous,
        old,
        new,
        reason,
    );
    Ok(tuple.into_pyobject(py)?.into_any().unbind())
}

#[pymethods]
impl EventPump {
    /// Waits for at least one event and returns up to `most` (empty at the end).
    fn next_batch<'py>(&self, py: Python<'py>, most: usize) -> PyResult<Bound<'py, PyAny>> {
        let rx = self.rx.clone();
        bridge(py, async move {
            let mut rx = rx.lock().await;
            let mut events = Vec::new();
            if rx.recv_many(&mut events, most.max(1)).await == 0 {
                return Python::with_gil(|py| Ok(PyList::empty(py).into_any().unbind()));
            }
            Python::with_gil(|py| {
                let list = PyList::empty(py);
                for event in events {
                    list.append(event_tuple(py, event)?)?;
                }
                Ok(list.into_any().unbind())
            })
        })
    }

    /// Events dropped so far because handlers fell behind.
    #[getter]
    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The library's log lines go to Python's logging (logger names are Rust paths), from
    // INFO up: below that, the records and span events of every write would each cost a
    // call into the logging bridge.
    if let Ok(logger) = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::LoggersAndLevels) {
        let _ = logger.filter(log::LevelFilter::Info).install();
    }
    m.add("PrismError", m.py().get_type::<PrismError>())?;
    m.add_class::<Client>()?;
    m.add_class::<PyInstance>()?;
    m.add_class::<EventPump>()?;
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(_set_status_enum, m)?)?;
    m.add_function(wrap_pyfunction!(_set_resolver, m)?)?;
    Ok(())
}
