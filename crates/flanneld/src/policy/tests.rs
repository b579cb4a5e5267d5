//! The enforcer on a fake table: when it writes, and what.

use super::table::{PolicyTable, TableError};
use super::watch::{Feed, Namespaces, Pods, Policies, Raw};
use super::*;
use flannel_policy::Ruleset;
use flannel_subnet::kube::source::Consumer;
use serde_json::json;
use std::sync::Mutex;

#[derive(Default)]
struct FakeTable {
    written: Mutex<Vec<Ruleset>>,
}

impl PolicyTable for FakeTable {
    fn converge(&self, want: &Ruleset) -> Result<Option<String>, TableError> {
        let mut w = self.written.lock().unwrap();
        if w.last() == Some(want) {
            return Ok(None);
        }
        w.push(want.clone());
        Ok(Some(want.script()))
    }
    fn remove(&self) -> Result<bool, TableError> {
        Ok(false)
    }
}

fn pod(name: &str, labels: serde_json::Value) -> Raw {
    Raw(
        json!({"metadata": {"name": name, "namespace": "x", "labels": labels},
        "spec": {"nodeName": "n1"}, "status": {"podIP": "10.244.1.2", "phase": "Running"}}),
    )
}

fn deny_all() -> Raw {
    Raw(json!({"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}))
}

async fn until(table: &FakeTable, n: usize) -> Vec<Ruleset> {
    for _ in 0..200 {
        {
            let w = table.written.lock().unwrap();
            if w.len() >= n {
                return w.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the table was not written {n} times");
}

#[tokio::test]
async fn nothing_is_written_before_every_kind_listed_then_each_change_is() {
    let shared = Arc::new(Shared::default());
    let listed = AllListed::new(3);
    let table = Arc::new(FakeTable::default());
    let metrics = crate::metrics::Metrics::new();
    let task = tokio::spawn(enforce(
        shared.clone(),
        listed.clone(),
        "n1".into(),
        table.clone(),
        Duration::from_secs(3600),
        metrics.clone(),
    ));
    let (mut pods, mut nss, mut pols) = (
        Feed::<Pods>::new(shared.clone()),
        Feed::<Namespaces>::new(shared.clone()),
        Feed::<Policies>::new(shared.clone()),
    );
    pods.page(vec![pod("a", json!({"app": "web"}))]);
    pods.listed();
    listed.listed_once();
    pols.page(vec![deny_all()]);
    pols.listed();
    listed.listed_once();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        table.written.lock().unwrap().is_empty(),
        "namespaces not listed yet: nothing written"
    );
    nss.listed();
    listed.listed_once();
    let w = until(&table, 1).await;
    assert!(
        w[0].chains.contains_key("pod-in.x.a"),
        "x/a isolated by x/deny"
    );
    let page = metrics.render(false);
    for line in [
        "flannel_network_policies 1",
        "flannel_network_policy_isolated_pods{direction=\"ingress\"} 1",
        "flannel_network_policy_isolated_pods{direction=\"egress\"} 0",
    ] {
        assert!(page.contains(line), "{line} not in\n{page}");
    }
    let rules = page
        .lines()
        .find_map(|l| l.strip_prefix("flannel_network_policy_rules "))
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(
        rules,
        Some(w[0].size().0 as f64),
        "the rules of the table written"
    );
    pols.deleted(deny_all());
    let w = until(&table, 2).await;
    assert!(
        !w[1].chains.contains_key("pod-in.x.a"),
        "the policy deleted: x/a open again"
    );
    task.abort();
}
