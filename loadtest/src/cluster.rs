//! `--etcd`: the cluster's cell owners, read once a second during the run,
//! so that the report shows when cells migrated.

use crate::stats::{ClusterEvent, Stats};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::{EtcdStore, EtcdTls};

/// Records every owner change of a cell until `deadline`.
pub(crate) async fn watch(
    etcd: Vec<String>,
    tls: Option<EtcdTls>,
    prefix: String,
    stats: Arc<Stats>,
    deadline: Instant,
) {
    let store = match EtcdStore::connect(&etcd, tls.as_ref(), Duration::from_secs(3)).await {
        Ok(s) => s,
        Err(e) => {
            stats.error(format!("etcd: {e}"));
            return;
        }
    };
    let mut owners: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut first = true;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < deadline {
        every.tick().await;
        let snap = match tessera_coordinator::ctl::snapshot(&store, &prefix).await {
            Ok(s) => s,
            Err(e) => {
                stats.error(format!("etcd: {}", crate::quic_bot::short(&e.to_string())));
                continue;
            }
        };
        for row in snap.cells {
            let cell = row.cell.to_string();
            let now = (row.owner.clone(), row.epoch.0);
            match owners.insert(cell.clone(), now.clone()) {
                Some(before) if before.0 != now.0 => stats.cluster_event(ClusterEvent {
                    t: stats.t(),
                    kind: "migration".into(),
                    cell: Some(cell),
                    from: Some(before.0),
                    to: Some(now.0),
                    epoch: Some(now.1),
                }),
                None if !first => stats.cluster_event(ClusterEvent {
                    t: stats.t(),
                    kind: "placed".into(),
                    cell: Some(cell),
                    from: None,
                    to: Some(now.0),
                    epoch: Some(now.1),
                }),
                _ => {}
            }
        }
        first = false;
    }
}
