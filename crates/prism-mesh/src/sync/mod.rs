//! Meeting points between the tasks of one mesh, below both the owners and the view: a
//! writer waits on the [`Watermark`] to read its own write, the view tells owners about
//! their keys through [`KeyAlerts`], and every task stops on a closing flag.

mod alerts;
mod watermark;

pub(crate) use alerts::{KeyAlerts, KeyOwner};
pub(crate) use watermark::Watermark;

use tokio::sync::watch;

/// Resolves once the flag is true; `false` if the sender is gone first.
/// (Wrapping `wait_for` drops its borrow guard here, keeping callers' futures `Send`.)
pub(crate) async fn until_true(flag: &mut watch::Receiver<bool>) -> bool {
    flag.wait_for(|value| *value).await.is_ok()
}
