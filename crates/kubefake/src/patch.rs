//! The three patch kinds the API server accepts, on JSON objects: JSON merge patch (RFC 7386,
//! `kubectl annotate`), strategic merge patch (what flanneld and `kubectl patch` send: lists
//! with a merge key are merged by it, `null` deletes) and JSON patch (RFC 6902).

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The merge key of a list at `path` in a Node, Pod or ConfigMap (the `patchMergeKey` of
/// Kubernetes' Go types), for the lists flannel's clients touch.
fn merge_key(path: &[String]) -> Option<&'static str> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["status", "conditions"] | ["status", "addresses"] => Some("type"),
        ["spec", "taints"] => Some("key"),
        ["metadata", "ownerReferences"] => Some("uid"),
        ["spec", "containers"] | ["spec", "initContainers"] => Some("name"),
        _ => None,
    }
}

/// Lists of scalars merged as sets (`patchStrategy: merge` without a key).
fn merges_scalars(path: &[String]) -> bool {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    matches!(
        p.as_slice(),
        ["spec", "podCIDRs"] | ["metadata", "finalizers"]
    )
}

/// Strategic merge patch: like [`merge_patch`], except that lists with a merge key are merged
/// item by item (an item `{"$patch": "delete", <key>: ..}` removes one), and scalar lists with
/// the merge strategy are merged as sets. Other lists are replaced.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    smp(target, patch, &mut Vec::new())
}

fn smp(target: &mut Value, patch: &Value, path: &mut Vec<String>) -> Result<(), PatchError> {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Value::Object(t) = target else {
                return Ok(());
            };
            for (k, v) in p {
                if k.starts_with('$') {
                    continue; // directives other than list-item deletes are not needed here
                }
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                path.push(k.clone());
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                let r = match (merge_key(path), v) {
                    (Some(key), Value::Array(items)) => merge_keyed_list(slot, items, key, path),
                    (None, Value::Array(items)) if merges_scalars(path) => {
                        let mut out: Vec<Value> = slot.as_array().cloned().unwrap_or_default();
                        for i in items {
                            if !out.contains(i) {
                                out.push(i.clone());
                            }
                        }
                        *slot = Value::Array(out);
                        Ok(())
                    }
                    _ => smp(slot, v, path),
                };
                path.pop();
                r?;
            }
            Ok(())
        }
        other => {
            *target = other.clone();
            Ok(())
        }
    }
}

fn merge_keyed_list(
    slot: &mut Value,
    items: &[Value],
    key: &str,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    let mut out: Vec<Value> = slot.as_array().cloned().unwrap_or_default();
    for item in items {
        let id = item.get(key).cloned().ok_or_else(|| {
            PatchError(format!(
                "{}: list item has no merge key {key:?}",
                path.join(".")
            ))
        })?;
        let at = out.iter().position(|o| o.get(key) == Some(&id));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = at {
                out.remove(i);
            }
            continue;
        }
        match at {
            Some(i) => smp(&mut out[i], item, path)?,
            None => out.push(item.clone()),
        }
    }
    *slot = Value::Array(out);
    Ok(())
}

/// RFC 6901 pointer segments (`~1` is `/`, `~0` is `~`).
fn pointer(p: &str) -> Result<Vec<String>, PatchError> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| PatchError(format!("path {p:?} must start with /")))?;
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, segs: &[String]) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for s in segs {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(s)
                .ok_or_else(|| PatchError(format!("path segment {s:?} not found")))?,
            Value::Array(a) => {
                let i: usize = s
                    .parse()
                    .map_err(|_| PatchError(format!("{s:?} is not an array index")))?;
                a.get_mut(i)
                    .ok_or_else(|| PatchError(format!("index {i} out of range")))?
            }
            _ => return Err(PatchError(format!("cannot descend into {s:?}"))),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, segs: &[String], v: Value) -> Result<(), PatchError> {
    let Some((last, init)) = segs.split_last() else {
        *doc = v;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), v);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse()
                    .map_err(|_| PatchError(format!("{last:?} is not an array index")))?
            };
            if i > a.len() {
                return Err(PatchError(format!("index {i} out of range")));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(PatchError("add: parent is not a container".into())),
    }
}

fn remove(doc: &mut Value, segs: &[String]) -> Result<Value, PatchError> {
    let (last, init) = segs
        .split_last()
        .ok_or_else(|| PatchError("cannot remove the whole document".into()))?;
    match parent(doc, init)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| PatchError(format!("{last:?} not found"))),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| PatchError(format!("{last:?} is not an array index")))?;
            if i >= a.len() {
                return Err(PatchError(format!("index {i} out of range")));
            }
            Ok(a.remove(i))
        }
        _ => Err(PatchError("remove: parent is not a container".into())),
    }
}

/// RFC 6902: add, remove, replace, move, copy, test; all or nothing.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError("a JSON patch is an array of operations".into()))?;
    let mut doc = target.clone();
    for op in ops {
        let name = op["op"]
            .as_str()
            .ok_or_else(|| PatchError("operation without \"op\"".into()))?;
        let path = pointer(op["path"].as_str().unwrap_or(""))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError(format!("{name}: no value")))
        };
        let from = || pointer(op["from"].as_str().unwrap_or(""));
        match name {
            "add" => add(&mut doc, &path, value()?)?,
            "remove" => {
                remove(&mut doc, &path)?;
            }
            "replace" => {
                remove(&mut doc, &path)?;
                add(&mut doc, &path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, &from()?)?;
                add(&mut doc, &path, v)?;
            }
            "copy" => {
                let v = parent(&mut doc, &from()?)?.clone();
                add(&mut doc, &path, v)?;
            }
            "test" => {
                if *parent(&mut doc, &path)? != value()? {
                    return Err(PatchError(format!("test failed at {}", path.join("/"))));
                }
            }
            other => return Err(PatchError(format!("unknown operation {other:?}"))),
        }
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_and_null_deletes() {
        let mut t = json!({"metadata":{"annotations":{"a":"1","b":"2"}},"spec":{"x":[1,2]}});
        merge_patch(
            &mut t,
            &json!({"metadata":{"annotations":{"a":null,"c":"3"}},"spec":{"x":[3]}}),
        );
        assert_eq!(
            t,
            json!({"metadata":{"annotations":{"b":"2","c":"3"}},"spec":{"x":[3]}})
        );
    }

    #[test]
    fn strategic_merge_merges_conditions_by_type() {
        let mut t = json!({"status":{"conditions":[
            {"type":"Ready","status":"True"},
            {"type":"NetworkUnavailable","status":"True","reason":"NoRouteCreated"}]}});
        strategic_merge_patch(
            &mut t,
            &json!({"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}]}}),
        )
        .unwrap();
        assert_eq!(
            t["status"]["conditions"],
            json!([{"type":"Ready","status":"True"},{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}])
        );
        strategic_merge_patch(
            &mut t,
            &json!({"status":{"conditions":[{"type":"Ready","$patch":"delete"}]}}),
        )
        .unwrap();
        assert_eq!(t["status"]["conditions"].as_array().unwrap().len(), 1);
        // Lists without a merge key are replaced; scalar sets merge.
        let mut t = json!({"spec":{"podCIDRs":["10.244.1.0/24"],"other":[1]}});
        strategic_merge_patch(
            &mut t,
            &json!({"spec":{"podCIDRs":["fd00::/64"],"other":[2]}}),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"spec":{"podCIDRs":["10.244.1.0/24","fd00::/64"],"other":[2]}})
        );
        assert!(
            strategic_merge_patch(&mut t, &json!({"status":{"conditions":[{"x":1}]}})).is_err()
        );
    }

    #[test]
    fn json_patch_ops_all_or_nothing() {
        let mut t = json!({"metadata":{"annotations":{"a/b":"1"}},"l":[1,2]});
        json_patch(
            &mut t,
            &json!([
                {"op":"test","path":"/metadata/annotations/a~1b","value":"1"},
                {"op":"replace","path":"/metadata/annotations/a~1b","value":"2"},
                {"op":"add","path":"/l/-","value":3},
                {"op":"copy","from":"/l/0","path":"/first"},
                {"op":"move","from":"/first","path":"/moved"},
                {"op":"remove","path":"/l/1"}
            ]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"metadata":{"annotations":{"a/b":"2"}},"l":[1,3],"moved":1})
        );
        let before = t.clone();
        assert!(json_patch(
            &mut t,
            &json!([{"op":"remove","path":"/l/0"},{"op":"test","path":"/moved","value":9}])
        )
        .is_err());
        assert_eq!(t, before, "a failed patch changes nothing");
    }
}
