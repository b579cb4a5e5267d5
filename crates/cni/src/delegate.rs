//! Building the delegate configuration (upstream `flannel_linux.go: doCmdAdd`).

use crate::netconf::NetConf;
use flannel_core::subnet_env::SubnetFile;
use serde_json::{json, Map, Value};

/// Checks the user's `delegate` block with upstream's messages.
pub fn validate(d: &Map<String, Value>) -> Result<(), String> {
    if let Some(t) = d.get("type") {
        if !t.is_string() {
            return Err(
                "'delegate' dictionary, if present, must have (string) 'type' field".into(),
            );
        }
    }
    if d.contains_key("name") {
        return Err(
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel".into(),
        );
    }
    if d.contains_key("ipam") {
        return Err(
            "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel".into(),
        );
    }
    Ok(())
}

/// The delegate config: user keys kept, flannel's defaults filled in, IPAM ranges and routes
/// from subnet.env. Serialized with sorted keys, as Go marshals a map.
pub fn build(conf: &NetConf, env: &SubnetFile) -> Result<Map<String, Value>, String> {
    let mut d = conf.delegate.clone().unwrap_or_default();
    validate(&d)?;
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    d.insert("name".into(), json!(conf.name));
    d.entry("type").or_insert(json!("bridge"));
    d.entry("ipMasq")
        .or_insert(json!(!env.ipmasq.unwrap_or(false)));
    if let Some(mtu) = env.mtu {
        d.entry("mtu").or_insert(json!(mtu));
    }
    if d.get("type") == Some(&json!("bridge")) {
        d.entry("isGateway").or_insert(json!(true));
    }
    if !conf.cni_version.is_empty() {
        d.insert("cniVersion".into(), json!(conf.cni_version));
    }

    let mut ipam = conf.ipam.clone().unwrap_or_default();
    ipam.entry("type").or_insert(json!("host-local"));
    let mut ranges = Vec::new();
    if let Some(s) = env.subnet {
        ranges.push(json!([{"subnet": s.to_string()}]));
    }
    if let Some(s) = env.ipv6_subnet {
        ranges.push(json!([{"subnet": s.to_string()}]));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes: Vec<Value> = ipam
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    routes.extend(env.networks.iter().map(|n| json!({"dst": n.to_string()})));
    routes.extend(
        env.ipv6_networks
            .iter()
            .map(|n| json!({"dst": n.to_string()})),
    );
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet_env::parse;

    const ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn upstream_expected_delegate_byte_for_byte() {
        let conf = NetConf::parse(br#"{"name":"cni-flannel","type":"flannel"}"#).unwrap();
        let d = build(&conf, &parse("f", ENV).unwrap()).unwrap();
        assert_eq!(
            Value::Object(d).to_string(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
    }

    #[test]
    fn user_keys_routes_and_runtime_config_are_kept() {
        let conf = NetConf::parse(
            br#"{"name":"cbr0","cniVersion":"0.3.1","delegate":{"hairpinMode":true,"isDefaultGateway":true,"mtu":1400},
                "ipam":{"type":"my-ipam","routes":[{"dst":"192.168.0.0/16"}]},"runtimeConfig":{"portMappings":[]}}"#,
        )
        .unwrap();
        let d = build(&conf, &parse("f", ENV).unwrap()).unwrap();
        assert_eq!(d["hairpinMode"], true);
        assert_eq!(d["mtu"], 1400, "user value wins");
        assert_eq!(d["cniVersion"], "0.3.1");
        assert_eq!(d["runtimeConfig"], json!({"portMappings":[]}));
        assert_eq!(d["ipam"]["type"], "my-ipam");
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst":"192.168.0.0/16"},{"dst":"10.1.0.0/16"}])
        );
    }

    #[test]
    fn delegate_validation_messages() {
        for (delegate, want) in [
            (r#"{"type":1}"#, "(string) 'type'"),
            (r#"{"name":"x"}"#, "must not have 'name'"),
            (r#"{"ipam":{}}"#, "must not have 'ipam'"),
        ] {
            let conf =
                NetConf::parse(format!(r#"{{"name":"n","delegate":{delegate}}}"#).as_bytes())
                    .unwrap();
            assert!(
                build(&conf, &parse("f", ENV).unwrap())
                    .unwrap_err()
                    .contains(want),
                "{delegate}"
            );
        }
    }
}
