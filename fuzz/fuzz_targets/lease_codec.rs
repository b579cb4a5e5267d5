//! Subnet keys and lease values: parsing never panics, and what parses writes back to something
//! that parses to the same value (backend data byte for byte: other writers' data is kept as
//! written).
#![no_main]
use flannel_core::subnet_key::SubnetKey;
use flannel_core::LeaseAttrs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = SubnetKey::parse(s) {
            assert_eq!(SubnetKey::parse(&k.to_string()), Ok(k));
        }
    }
    if let Ok(a) = LeaseAttrs::from_json(data) {
        let again = LeaseAttrs::from_json(a.to_json().as_bytes()).expect("our own output parses");
        assert_eq!(again, a);
        assert_eq!(again.to_json(), a.to_json(), "encoding is stable");
        if let Some(d) = &a.backend_data {
            let _ = flannel_core::lease::VxlanData::from_raw(d);
        }
    }
});
