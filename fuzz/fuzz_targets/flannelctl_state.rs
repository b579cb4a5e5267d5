//! flannelctl's outside input: the state JSON flanneld serves (or a saved file an operator
//! hands it), judged by every doctor check and walked by trace, and the `nft -a list ruleset`
//! text it reads INPUT rules from. Any bytes give a verdict or an error, never a panic.
#![no_main]
use flannel_ctl::doctor::checks::{self, Facts};
use flannel_ctl::trace::{self, RouteAnswer, TraceFacts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let _ = flannel_ctl::doctor::gather::nft_input_rules(&lines);
    let Ok(state) = serde_json::from_slice::<flannel_core::state::StateSnapshot>(data) else {
        return;
    };
    let mut f = Facts {
        state: Some(state.clone()),
        subnet_env: Ok(String::from_utf8_lossy(&data[..data.len() / 2]).into_owned()),
        ..Facts::default()
    };
    f.sysctl.insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
    let verdicts = checks::all(&f);
    assert!(!verdicts.is_empty());
    // A walk to every lease's first address, through the device its route would take.
    let src = state.own.subnet.map(|s| s.addr()).unwrap_or([10, 0, 0, 1].into());
    for l in state.leases.iter().take(8) {
        let Some(dst) = l.subnet.or(l.subnet6).map(|s| s.addr()) else {
            continue;
        };
        let t = TraceFacts {
            state: &state,
            kernel: &f,
            to_dst: RouteAnswer {
                dev: state.node.devices.first().cloned(),
                gw: Some(dst),
                src: None,
            },
            to_underlay: Some(RouteAnswer::default()),
            ext_mtu: state.node.iface_mtu,
        };
        let steps = trace::walk(&t, src, dst);
        let _ = trace::render(src, dst, &steps);
    }
});
