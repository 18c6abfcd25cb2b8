//! The cluster-store conformance suite against the in-process `MemStore`.

use std::sync::Arc;
use tessera_coordinator::conformance::run_all;
use tessera_coordinator::MemStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mem_store_conforms() {
    run_all(Arc::new(MemStore::new()), "/tessera-conformance/").await;
}
