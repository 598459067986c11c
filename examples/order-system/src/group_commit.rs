//! Group commit: concurrent writers to one database queue what they
//! write, and whoever holds the writer's turn writes everything queued by
//! then in one transaction, so a burst of writes costs a commit (and, set
//! by set, a few statements), not one each.
//!
//! There is no writer task: the first caller to take the turn writes, and
//! the callers who queued meanwhile wait for its answer or the next turn.
//! A caller dropped while holding the turn abandons the group it was
//! writing; its members learn that ([`Unwritten::Abandoned`]) and decide
//! for themselves (write again on their own, or fail).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Why an item queued for a group commit has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unwritten {
    /// The group's transaction failed with this error: nothing of it is
    /// committed.
    Failed(Arc<str>),
    /// The call writing the group was dropped before it answered: whether
    /// the group committed is unknown.
    Abandoned,
}

impl std::fmt::Display for Unwritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(error) => f.write_str(error),
            Self::Abandoned => f.write_str("the transaction writing it was abandoned"),
        }
    }
}

/// The queue of items of type `T` waiting to be written, each answered
/// with an `A`.
pub(crate) struct GroupCommit<T, A> {
    queue: Mutex<Vec<Queued<T, A>>>,
    writing: tokio::sync::Mutex<()>,
}

type Queued<T, A> = (T, oneshot::Sender<Result<A, Arc<str>>>);

impl<T, A> Default for GroupCommit<T, A> {
    fn default() -> Self {
        Self {
            queue: Mutex::default(),
            writing: tokio::sync::Mutex::default(),
        }
    }
}

impl<T, A> std::fmt::Debug for GroupCommit<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("GroupCommit")
            .field("queued", &queued)
            .finish_non_exhaustive()
    }
}

impl<T, A> GroupCommit<T, A> {
    /// Queues `item` and answers what was written for it: by an earlier
    /// holder of the turn, or by this call, which then hands `write` every
    /// item queued by then, in the order queued; `write` commits them in
    /// one transaction and answers each, in that order.
    ///
    /// # Errors
    ///
    /// [`Unwritten`]: the group's transaction failed, or was abandoned.
    pub(crate) async fn write<W, F, E>(&self, item: T, write: W) -> Result<A, Unwritten>
    where
        W: FnOnce(Vec<T>) -> F,
        F: Future<Output = Result<Vec<A>, E>>,
        E: std::fmt::Display,
    {
        let (reply, replied) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((item, reply));
        {
            // Our item is written by the time we hold the turn: by an
            // earlier holder, or by us now.
            let _turn = self.writing.lock().await;
            let group =
                std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
            if !group.is_empty() {
                let (items, replies): (Vec<T>, Vec<_>) = group.into_iter().unzip();
                match write(items).await {
                    Ok(answers) => {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Err(error) => {
                        let error: Arc<str> = error.to_string().into();
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
            }
        }
        match replied.await {
            Ok(written) => written.map_err(Unwritten::Failed),
            Err(_) => Err(Unwritten::Abandoned),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Every caller gets its own item's answer, in whichever group it
    /// was written, and every item is written once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_caller_gets_its_own_answer_and_each_item_is_written_once() {
        let commits = Arc::new(GroupCommit::<u32, u32>::default());
        let written = Arc::new(Mutex::new(Vec::<u32>::new()));
        let groups = Arc::new(AtomicUsize::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for item in 0..500_u32 {
            let (commits, written, groups) = (commits.clone(), written.clone(), groups.clone());
            callers.spawn(async move {
                let answer = commits
                    .write(item, |group: Vec<u32>| async move {
                        groups.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                        written.lock().unwrap().extend(&group);
                        Ok::<_, std::convert::Infallible>(group.iter().map(|n| n * 2).collect())
                    })
                    .await
                    .unwrap();
                assert_eq!(answer, item * 2);
            });
        }
        while let Some(joined) = callers.join_next().await {
            joined.unwrap();
        }
        let mut written = written.lock().unwrap().clone();
        written.sort_unstable();
        assert_eq!(written, (0..500).collect::<Vec<_>>());
        assert!(groups.load(Ordering::Relaxed) <= 500);
    }

    /// A failed group's error reaches each of its members; an abandoned
    /// group's members learn it was abandoned, and the next turn goes on.
    #[tokio::test]
    async fn failed_and_abandoned_groups_answer_every_member() {
        use futures_util::FutureExt as _;

        let commits = GroupCommit::<u32, u32>::default();
        assert_eq!(
            commits
                .write(1, |_| async { Err::<Vec<u32>, _>("disk full") })
                .await,
            Err(Unwritten::Failed("disk full".into()))
        );
        // 2 and 3 queue while the turn is held; 2's call then takes the
        // turn and the group of both, and is dropped before it answers.
        let turn = commits.writing.lock().await;
        let mut writer =
            Box::pin(commits.write(2, |_| std::future::pending::<Result<Vec<u32>, &str>>()));
        let mut member = Box::pin(commits.write(3, |_| async { Ok::<Vec<u32>, &str>(Vec::new()) }));
        assert!((&mut writer).now_or_never().is_none());
        assert!((&mut member).now_or_never().is_none());
        drop(turn);
        assert!((&mut writer).now_or_never().is_none(), "writing 2 and 3");
        drop(writer);
        assert_eq!(member.await, Err(Unwritten::Abandoned));
        assert_eq!(
            commits
                .write(4, |group| async move { Ok::<_, &str>(group) })
                .await,
            Ok(4)
        );
    }
}
