//! subnet.env as the plugin reads it (upstream `loadFlannelSubnetEnv`), on the one reader in
//! `flannel_core::subnet_env`: networks may be comma-separated lists (kept once each); a bad
//! value or the missing items are named in one error.

use flannel_core::subnet_env::SubnetFile;

fn unique<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Parses the file text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<SubnetFile, String> {
    let mut e = SubnetFile::parse(text);
    if let Some((k, v, expected)) = e.invalid.first() {
        return Err(format!("{file}: {k}={v:?}: {expected}"));
    }
    e.networks = unique(e.networks);
    e.ipv6_networks = unique(e.ipv6_networks);
    let mut missing = Vec::new();
    if e.networks.is_empty() && e.ipv6_networks.is_empty() {
        missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
    }
    if e.subnet.is_none() && e.ipv6_subnet.is_none() {
        missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
    }
    if e.mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if e.ipmasq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    if !missing.is_empty() {
        return Err(format!("{file} is missing {}", missing.join(", ")));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_upstream_sample_with_two_networks() {
        let e = parse(
            "f",
            "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(e.networks.len(), 2, "deduplicated");
        assert_eq!(e.subnet.unwrap().to_string(), "10.1.17.0/24");
        assert_eq!(e.mtu, Some(1472));
        assert_eq!(e.ipmasq, Some(true));
    }

    #[test]
    fn missing_and_invalid_items_are_named() {
        assert_eq!(
            parse("/run/flannel/subnet.env", "FLANNEL_MTU=1450\n").unwrap_err(),
            "/run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ"
        );
        assert!(parse("f", "FLANNEL_MTU=big\n")
            .unwrap_err()
            .contains("FLANNEL_MTU"));
        assert!(parse("f", "FLANNEL_SUBNET=10.1.1\n")
            .unwrap_err()
            .contains("FLANNEL_SUBNET"));
    }
}
