//! Small async helpers shared by the tasks.

use tokio::sync::watch;

/// Resolves once the flag is true; `false` if the sender is gone first.
/// (Wrapping `wait_for` drops its borrow guard here, keeping callers' futures `Send`.)
pub(crate) async fn until_true(flag: &mut watch::Receiver<bool>) -> bool {
    flag.wait_for(|value| *value).await.is_ok()
}
