//! The network config parser: any input gives a config or an error, never a panic; a config that
//! passes the checks has a usable allocation range, and its `Backend` block reads as a typed
//! backend config or an error naming the type or the key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = flannel_core::NetworkConfig::parse_and_check(&text) {
        if let Some(r) = c.v4_range() {
            assert!(r.min <= r.max);
            assert!(r.subnet_len <= 30);
            let _ = flannel_core::allocator::free_candidates(&r, &[], 3);
        }
        if let Some(r) = c.v6_range() {
            assert!(r.min <= r.max);
        }
        match flannel_backend::BackendConfig::from_network(&c) {
            Ok(b) => assert!(flannel_backend::SUPPORTED.contains(&b.type_name())),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
