//! Group commit: concurrent writers to one database queue what they
//! write, and whoever holds the writer's turn writes everything queued by
//! then in one transaction, so a burst of writes costs a commit (and, set
//! by set, a few statements), not one each.
//!
//! There is no writer task waiting for work: the first caller to take the
//! turn hands the queued items to a task of their own, which writes them,
//! answers each and gives the turn back; the callers who queued meanwhile
//! wait for their answer or the next turn. So a caller that goes away
//! (a request its client dropped) changes nothing for the others: an item
//! whose caller went away before its group was taken is not written, and
//! a group once taken is written and answered whoever leaves.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Why an item queued for a group commit has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unwritten {
    /// The group's transaction failed with this error: nothing of it is
    /// committed.
    Failed(Arc<str>),
    /// The task writing the group panicked, or the runtime is shutting
    /// down: whether the group committed is unknown.
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
    writing: Arc<tokio::sync::Mutex<()>>,
}

type Queued<T, A> = (T, oneshot::Sender<Result<A, Arc<str>>>);

impl<T, A> Default for GroupCommit<T, A> {
    fn default() -> Self {
        Self {
            queue: Mutex::default(),
            writing: Arc::default(),
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

impl<T: Send + 'static, A: Send + 'static> GroupCommit<T, A> {
    /// Queues `item` and answers what was written for it: by an earlier
    /// turn, or by this call's, which hands `write` every item queued by
    /// then whose caller still waits, in the order queued; the future
    /// `write` returns commits them in one transaction and answers each,
    /// in that order. It runs as a task of its own (see the
    /// [module](self)).
    ///
    /// # Errors
    ///
    /// [`Unwritten`]: the group's transaction failed, or was abandoned.
    pub(crate) async fn write<W, F, E>(&self, item: T, write: W) -> Result<A, Unwritten>
    where
        W: FnOnce(Vec<T>) -> F,
        F: Future<Output = Result<Vec<A>, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let (reply, mut replied) = oneshot::channel();
        {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            // Callers gone while a turn's write stalls (their timeouts,
            // their clients) leave their items behind: dropped whenever
            // the queue reaches a power of two past 64, so it holds at
            // most twice the callers waiting (or 64), at a cost of one
            // look at each item, amortized.
            if queue.len() >= 64 && queue.len().is_power_of_two() {
                queue.retain(|(_, reply)| !reply.is_closed());
            }
            queue.push((item, reply));
        }
        // Our item is written by the time we hold the turn (an earlier
        // turn's task gives it back once its group is answered), or we
        // write it now.
        let turn = self.writing.clone().lock_owned().await;
        match replied.try_recv() {
            Ok(written) => return written.map_err(Unwritten::Failed),
            Err(oneshot::error::TryRecvError::Closed) => return Err(Unwritten::Abandoned),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let (items, replies): (Vec<T>, Vec<_>) =
            std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .filter(|(_, reply)| !reply.is_closed())
                .unzip();
        let writing = write(items);
        tokio::spawn(async move {
            let answers = writing.await;
            answer(replies, answers);
            drop(turn);
        });
        match replied.await {
            Ok(written) => written.map_err(Unwritten::Failed),
            Err(_) => Err(Unwritten::Abandoned),
        }
    }
}

/// Sends each of a group's callers its answer, or the group's error.
fn answer<A, E: std::fmt::Display>(
    replies: Vec<oneshot::Sender<Result<A, Arc<str>>>>,
    answers: Result<Vec<A>, E>,
) {
    match answers {
        Ok(answers) => {
            let given = answers.len();
            let mut answers = answers.into_iter();
            for reply in replies {
                let _ = reply.send(answers.next().ok_or_else(|| {
                    format!("the group's transaction gave {given} answers, too few").into()
                }));
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    /// A write that records each group it is given and answers each item
    /// doubled.
    fn doubling(
        groups: &Arc<Mutex<Vec<Vec<u32>>>>,
    ) -> impl FnOnce(Vec<u32>) -> std::future::Ready<Result<Vec<u32>, &'static str>> {
        let groups = groups.clone();
        move |group| {
            let answers = group.iter().map(|n| n * 2).collect();
            groups.lock().unwrap().push(group);
            std::future::ready(Ok(answers))
        }
    }

    /// Every caller gets its own item's answer, in whichever group it
    /// was written, and every item is written once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_caller_gets_its_own_answer_and_each_item_is_written_once() {
        let commits = Arc::new(GroupCommit::<u32, u32>::default());
        let groups = Arc::new(Mutex::new(Vec::new()));
        let mut callers = tokio::task::JoinSet::new();
        for item in 0..500_u32 {
            let (commits, groups) = (commits.clone(), groups.clone());
            callers.spawn(async move {
                let answer = commits.write(item, doubling(&groups)).await;
                assert_eq!(answer, Ok(item * 2));
            });
        }
        while let Some(joined) = callers.join_next().await {
            joined.unwrap();
        }
        let mut written: Vec<u32> = groups.lock().unwrap().concat();
        written.sort_unstable();
        assert_eq!(written, (0..500).collect::<Vec<_>>());
    }

    /// Callers queued while the turn is held are written as one group,
    /// in the order queued; one that went away before its group was
    /// taken is not written at all.
    #[tokio::test]
    async fn callers_queued_meanwhile_are_one_group_without_those_gone() {
        let commits = GroupCommit::<u32, u32>::default();
        let groups = Arc::new(Mutex::new(Vec::new()));
        let turn = commits.writing.clone().lock_owned().await;
        let mut first = Box::pin(commits.write(1, doubling(&groups)));
        let mut gone = Box::pin(commits.write(2, doubling(&groups)));
        let mut third = Box::pin(commits.write(3, doubling(&groups)));
        for caller in [&mut first, &mut gone, &mut third] {
            assert!(caller.now_or_never().is_none(), "queued behind the turn");
        }
        drop(gone);
        drop(turn);
        assert_eq!(first.await, Ok(2));
        assert_eq!(third.await, Ok(6));
        assert_eq!(*groups.lock().unwrap(), [vec![1, 3]]);
    }

    /// Callers that go away while the turn is held (a stalled write)
    /// leave at most a bounded queue behind: it grew by each of them
    /// until the write ended.
    #[tokio::test]
    async fn callers_gone_while_a_write_stalls_leave_a_bounded_queue() {
        let commits = GroupCommit::<u32, u32>::default();
        let groups = Arc::new(Mutex::new(Vec::new()));
        let turn = commits.writing.clone().lock_owned().await;
        for item in 0..1_000 {
            let mut gone = Box::pin(commits.write(item, doubling(&groups)));
            assert!(
                (&mut gone).now_or_never().is_none(),
                "queued behind the turn"
            );
        }
        let mut waiting = Box::pin(commits.write(7, doubling(&groups)));
        assert!((&mut waiting).now_or_never().is_none());
        let queued = commits.queue.lock().unwrap().len();
        assert!(queued <= 64, "one caller waits, {queued} queued");
        drop(turn);
        assert_eq!(waiting.await, Ok(14));
        assert_eq!(*groups.lock().unwrap(), [vec![7]]);
    }

    /// A group whose writing caller goes away mid-transaction is still
    /// written and its other members answered; a failed group's error
    /// reaches each of its members.
    #[tokio::test]
    async fn a_group_is_answered_whoever_leaves_and_a_failure_reaches_all() {
        let commits = GroupCommit::<u32, u32>::default();
        let (go, going) = oneshot::channel::<()>();
        let turn = commits.writing.clone().lock_owned().await;
        let mut writer = Box::pin(commits.write(1, move |group: Vec<u32>| async move {
            going.await.unwrap();
            Ok::<_, &str>(group.iter().map(|n| n * 10).collect())
        }));
        let mut member = Box::pin(commits.write(2, |_| async { Ok::<_, &str>(Vec::new()) }));
        assert!((&mut writer).now_or_never().is_none());
        assert!((&mut member).now_or_never().is_none());
        drop(turn);
        assert!((&mut writer).now_or_never().is_none(), "writing 1 and 2");
        drop(writer);
        go.send(()).unwrap();
        assert_eq!(member.await, Ok(20));

        let failing = |_| async { Err::<Vec<u32>, _>("disk full") };
        assert_eq!(
            commits.write(3, failing).await,
            Err(Unwritten::Failed("disk full".into()))
        );
        // Too few answers fail the callers left without one.
        let short = |_| async { Ok::<Vec<u32>, &str>(Vec::new()) };
        assert!(matches!(
            commits.write(4, short).await,
            Err(Unwritten::Failed(_))
        ));
    }
}
