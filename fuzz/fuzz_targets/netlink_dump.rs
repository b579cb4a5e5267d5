//! A netlink dump read as the kernel might hand it over, or garbled: every read walked with each
//! of the reducers the full pass uses (routes of both families, neighbours, FDB entries) and
//! with the monitor's notification filter. Never a panic; whatever is kept is what its reducer
//! promises (a route of the asked family, a neighbour of that family, entries of link 9 only).
#![no_main]
use flannel_net::dump::read_messages;
use flannel_net::monitor::relevant;
use flannel_net::netlink::{fdb_entry, neighbour_entry, route_entry};
use flannel_net::Family;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for family in [Family::V4, Family::V6] {
        let mut routes = Vec::new();
        let _ = read_messages(data, &mut |m| route_entry(m, family), &mut routes);
        assert!(routes.iter().all(|r| Family::of(r.dst.addr()) == family));
        let mut neigh = Vec::new();
        let _ = read_messages(data, &mut |m| neighbour_entry(m, 9, family), &mut neigh);
        assert!(neigh.iter().all(|(ip, _)| Family::of(*ip) == family));
    }
    let mut fdb = Vec::new();
    let _ = read_messages(data, &mut |m| fdb_entry(m, 9), &mut fdb);
    let mut changes = Vec::new();
    let _ = read_messages(data, &mut |m| relevant(&m), &mut changes);
});
