use super::*;

fn rs(chain_rules: &[(&str, &[&str])], sets: &[(&str, &[&str])]) -> Ruleset {
    let mut r = Ruleset::default();
    for (n, rules) in chain_rules {
        r.chains.insert(
            n.to_string(),
            Chain {
                base: None,
                rules: rules.iter().map(|x| x.to_string()).collect(),
            },
        );
    }
    for (n, elems) in sets {
        r.sets.insert(
            n.to_string(),
            Set {
                decl: "type ipv4_addr ;".into(),
                map: false,
                elems: elems.iter().map(|x| x.to_string()).collect(),
            },
        );
    }
    r
}

#[test]
fn no_table_gets_the_whole_script_and_an_equal_one_nothing() {
    let a = rs(&[("c", &["ip saddr @s accept"])], &[("s", &["10.0.0.1"])]);
    assert_eq!(a.diff(None), Some(a.script()));
    assert!(a.script().starts_with("add table inet flannel-policy\n"));
    assert_eq!(a.diff(Some(&a.observed())), None);
}

#[test]
fn a_change_touches_only_what_changed_in_a_safe_order() {
    let before = rs(
        &[("c", &["ip saddr @s accept"]), ("old", &["drop"])],
        &[("s", &["10.0.0.1", "10.0.0.2"]), ("gone", &[])],
    );
    let after = rs(
        &[("c", &["ip saddr @s accept"]), ("new", &["accept"])],
        &[("s", &["10.0.0.2", "10.0.0.3"])],
    );
    let d = after.diff(Some(&before.observed())).unwrap();
    let lines: Vec<&str> = d.lines().collect();
    assert_eq!(
        lines,
        [
            "add chain inet flannel-policy new",
            "delete element inet flannel-policy s { 10.0.0.1 }",
            "add element inet flannel-policy s { 10.0.0.3 }",
            &format!(
                "add rule inet flannel-policy new accept comment \"{}\"",
                digest("accept")
            ),
            "flush chain inet flannel-policy old",
            "delete set inet flannel-policy gone",
            "delete chain inet flannel-policy old",
        ],
        "the unchanged chain c is not rewritten"
    );
    let edited = rs(&[("c", &["ip saddr @s drop"])], &[("s", &["10.0.0.2"])]);
    let d = edited.diff(Some(&after.observed())).unwrap();
    assert!(
        d.contains(
            "flush chain inet flannel-policy c\nadd rule inet flannel-policy c ip saddr @s drop"
        ),
        "{d}"
    );
}

#[test]
fn the_kernel_listing_reads_back_as_written() {
    // What `nft -j list table` printed for a table made by the script (nftables 1.0.6).
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "inet", "name": "flannel-policy", "handle": 1}},
      {"set": {"family": "inet", "name": "n4", "table": "flannel-policy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 3,
               "elem": [{"concat": ["10.0.0.3", "sctp", 9]}]}},
      {"set": {"family": "inet", "name": "s6", "table": "flannel-policy", "type": "ipv6_addr", "handle": 4}},
      {"map": {"family": "inet", "name": "pods-in4", "table": "flannel-policy", "type": "ipv4_addr", "map": "verdict",
               "elem": [["10.0.0.1", {"jump": {"target": "pod-in.x.a"}}]]}},
      {"chain": {"family": "inet", "table": "flannel-policy", "name": "pod-in.x.a", "handle": 1}},
      {"rule": {"family": "inet", "table": "flannel-policy", "chain": "pod-in.x.a", "handle": 9, "comment": "abc", "expr": []}},
      {"rule": {"family": "inet", "table": "flannel-policy", "chain": "pod-in.x.a", "handle": 10, "expr": []}}]}"#;
    let o = Observed::from_json(json).unwrap();
    assert_eq!(o.sets["n4"], ["10.0.0.3 . sctp . 9".to_string()].into());
    assert!(o.sets["s6"].is_empty());
    assert_eq!(
        o.sets["pods-in4"],
        ["10.0.0.1 : jump pod-in.x.a".to_string()].into()
    );
    assert_eq!(
        o.chains["pod-in.x.a"],
        ["abc", ""],
        "a rule without our comment is not ours: it gets rewritten"
    );
    assert!(Observed::from_json("{}").is_err());
}
