//! `prism witness`: records every expiry (and removal from outside the mesh) this user may
//! record on the event stream, writes checkpoints when they are due, and prints each expiry
//! it sees. Under `nats/auth.conf` services record only their own service's expiries and
//! no service writes checkpoints; run this as the `witness` user so that the last instance
//! of a service expiring is recorded too and the trail is checkpointed. Any number may run:
//! one expiry is one event, one checkpoint wins a race.

use std::process::ExitCode;

use futures::StreamExt;
use prism_mesh::{EventFilter, EventKind, Mesh, TerminationSignals};

use crate::output::event_line;
use crate::{CliError, ConnectArgs};

pub async fn run(connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let mesh = Mesh::builder()
        .nats(connect.options()?)
        .publish_expired_events(true)
        .connect()
        .await?;
    let mut signals = TerminationSignals::listen()?;
    let mut expiries = mesh.subscribe_filtered(EventFilter::from(EventKind::Expired));
    loop {
        tokio::select! {
            event = expiries.next() => match event {
                Some(event) => anstream::println!("{}", event_line(&event, connect.json)),
                None => break,
            },
            _ = signals.recv() => break,
        }
    }
    mesh.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
