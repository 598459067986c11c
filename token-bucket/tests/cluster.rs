//! The Redis store on a real Redis Cluster: three local `redis-server`
//! processes in cluster mode, started for the test.
#![cfg(feature = "redis")]

use palisade_testkit::redis_cluster::LocalCluster;
use palisade_token_bucket::{Bucket, FailurePolicy, RedisStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_work_on_a_cluster_and_keys_stay_in_one_slot() {
    let cluster = tokio::task::spawn_blocking(LocalCluster::start)
        .await
        .unwrap();
    let connection = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let store = RedisStore::new(connection, FailurePolicy::Propagate).prefix("api");
    let bucket = Bucket::new(3, 0.01).unwrap();
    // Keys spread over the nodes; each decision's key names one slot.
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        for left in (0..3).rev() {
            let decision = store.decide(user, &bucket, 1).await.unwrap();
            assert!(decision.is_allowed());
            assert_eq!(decision.remaining(), left);
        }
        assert!(!store.decide(user, &bucket, 1).await.unwrap().is_allowed());
        // The hash tag is the whole key: its slot is the slot of what the
        // braces hold.
        let key = store.key(user);
        assert_eq!(
            cluster.keyslot(&key),
            cluster.keyslot(&format!("api:{user}"))
        );
    }
}
