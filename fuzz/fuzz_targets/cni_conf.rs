//! The CNI plugin's inputs: the network config on stdin and subnet.env. Any bytes give a
//! delegate config or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte picks how the rest is split between the two inputs.
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize).min(rest.len());
    let (conf, env) = rest.split_at(cut);
    let Ok(conf) = flannel_cni::netconf::NetConf::parse(conf) else { return };
    let _ = conf.check_version();
    if let Ok(env) = flannel_cni::subnet_env::parse("subnet.env", &String::from_utf8_lossy(env)) {
        if let Ok(d) = flannel_cni::delegate::build(&conf, &env) {
            let _ = serde_json::Value::Object(d).to_string();
        }
    }
    let _ = flannel_cni::gc::valid_ids(rest);
});
