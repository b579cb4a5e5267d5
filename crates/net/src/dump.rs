//! Kernel table dumps read off a netlink socket of their own, each message reduced to the entry
//! we keep as soon as it is parsed.
//!
//! Why not rtnetlink's handle: its connection task reads the socket until it would block and
//! queues every parsed message for the caller; during a dump the kernel refills the socket on
//! each read, so the whole dump is parsed and queued before the caller sees the first message.
//! At 20000 peers that queue (messages with their attribute vectors) was ~7 MB of heap, the
//! largest part of the full pass's memory peak. Here at most one 32 KiB read is held at a time.

use rtnetlink::packet_core::{
    ErrorMessage, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, TokioSocket};
use std::num::NonZeroI32;

/// The kernel never puts more than this in one dump read (`SKB_WITH_OVERHEAD(32768)`).
const READ_SIZE: usize = 32 * 1024;
/// A dump the kernel marks interrupted (the table changed while it was read) is read again,
/// this many times at most; the last one is kept (a full pass runs again within 30 s).
const ATTEMPTS: usize = 3;

/// Sends `request` as a dump and returns what `keep` makes of each answer.
pub(crate) async fn dump<T>(
    request: RouteNetlinkMessage,
    mut keep: impl FnMut(RouteNetlinkMessage) -> Option<T>,
) -> Result<Vec<T>, rtnetlink::Error> {
    let mut out = Vec::new();
    for attempt in 1..=ATTEMPTS {
        out.clear();
        let complete = dump_once(request.clone(), &mut keep, &mut out).await?;
        if complete || attempt == ATTEMPTS {
            break;
        }
    }
    Ok(out)
}

/// One dump; false when the kernel flagged it interrupted.
async fn dump_once<T>(
    request: RouteNetlinkMessage,
    keep: &mut impl FnMut(RouteNetlinkMessage) -> Option<T>,
    out: &mut Vec<T>,
) -> Result<bool, rtnetlink::Error> {
    let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(io_error)?;
    socket.socket_mut().bind_auto().map_err(io_error)?;
    let mut msg = NetlinkMessage::from(request);
    msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut bytes = vec![0; msg.buffer_len()];
    msg.serialize(&mut bytes);
    socket.send(&bytes).await.map_err(io_error)?;

    let mut interrupted = false;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    loop {
        buf.clear();
        // The kernel fills each dump read with whole messages, up to `READ_SIZE`; a cut one
        // fails to parse and ends the dump with an error, never half-read.
        socket.recv(&mut buf).await.map_err(io_error)?;
        if buf.is_empty() {
            return Err(io_error(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let read = read_messages(&buf, keep, out)?;
        interrupted |= read.interrupted;
        if read.done {
            return Ok(!interrupted);
        }
    }
}

/// What one read of a dump said besides its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// The dump's end was in it.
    pub done: bool,
    /// The kernel flagged a message as read while the table changed (`NLM_F_DUMP_INTR`).
    pub interrupted: bool,
}

/// The messages in one read of a dump: each answer handed to `keep`, what it keeps put in
/// `out`. Bytes from the kernel, so never trusted: a malformed message is an error, not a panic
/// (fuzzed by `fuzz/fuzz_targets/netlink_dump.rs`).
pub fn read_messages<T>(
    buf: &[u8],
    keep: &mut impl FnMut(RouteNetlinkMessage) -> Option<T>,
    out: &mut Vec<T>,
) -> Result<Read, rtnetlink::Error> {
    let mut read = Read {
        done: false,
        interrupted: false,
    };
    let mut rest = buf;
    while !rest.is_empty() {
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
            .map_err(|e| rtnetlink::Error::InvalidNla(format!("dump message: {e}")))?;
        // Messages are 4-byte aligned; a length the buffer cannot hold ends the read.
        let len = (m.header.length as usize).saturating_add(3) & !3;
        read.interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
        match m.payload {
            NetlinkPayload::Done(_) => {
                read.done = true;
                return Ok(read);
            }
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(rtnetlink::Error::NetlinkError(e))
            }
            NetlinkPayload::InnerMessage(inner) => out.extend(keep(inner)),
            _ => {}
        }
        if len == 0 || len >= rest.len() {
            break;
        }
        rest = &rest[len..];
    }
    Ok(read)
}

/// A socket error, as the kernel's errno in rtnetlink's error type (callers read `errno()`).
fn io_error(e: std::io::Error) -> rtnetlink::Error {
    let mut m = ErrorMessage::default();
    m.code = NonZeroI32::new(-e.raw_os_error().unwrap_or(EIO));
    rtnetlink::Error::NetlinkError(m)
}

const EIO: i32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{fdb_entry, route_entry};
    use crate::ops::Family;
    use rtnetlink::packet_core::DoneMessage;
    use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage as M};
    use rtnetlink::RouteMessageBuilder;
    use std::net::Ipv4Addr;

    fn bytes(payload: NetlinkPayload<M>, flags: u16) -> Vec<u8> {
        let mut m = NetlinkMessage::new(Default::default(), payload);
        m.header.flags = flags;
        m.finalize();
        let mut b = vec![0; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    fn route(dst: &str) -> Vec<u8> {
        let r = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.parse().unwrap(), 24)
            .gateway("10.0.0.52".parse().unwrap())
            .output_interface(7)
            .build();
        bytes(NetlinkPayload::InnerMessage(M::NewRoute(r)), 0)
    }

    fn fdb(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
        let mut n = rtnetlink::packet_route::neighbour::NeighbourMessage::default();
        n.header.family = AddressFamily::Bridge;
        n.header.ifindex = index;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        bytes(NetlinkPayload::InnerMessage(M::NewNeighbour(n)), 0)
    }

    fn done(flags: u16) -> Vec<u8> {
        bytes(NetlinkPayload::Done(DoneMessage::default()), flags)
    }

    #[test]
    fn a_read_yields_each_kept_entry_and_sees_the_end_and_an_interruption() {
        let buf = [route("10.244.1.0"), route("10.244.2.0")].concat();
        let mut out = Vec::new();
        let r = read_messages(&buf, &mut |m| route_entry(m, Family::V4), &mut out).unwrap();
        assert_eq!(
            r,
            Read {
                done: false,
                interrupted: false
            }
        );
        let dsts: Vec<String> = out.iter().map(|e| e.dst.to_string()).collect();
        assert_eq!(dsts, ["10.244.1.0/24", "10.244.2.0/24"]);
        assert!(out.iter().all(|e| e.oif == Some(7) && e.gw.is_some()));

        let mac = [0xaa, 0xbb, 0xcc, 0, 0, 1];
        let buf = [
            fdb(9, mac, Ipv4Addr::new(10, 0, 0, 52)),
            fdb(3, mac, Ipv4Addr::new(10, 0, 0, 53)),
            done(NLM_F_DUMP_INTR),
        ]
        .concat();
        let mut out = Vec::new();
        let r = read_messages(&buf, &mut |m| fdb_entry(m, 9), &mut out).unwrap();
        assert!(r.done && r.interrupted);
        assert_eq!(out.len(), 1, "only link 9's entry: {out:?}");
        assert_eq!(out[0].1.to_string(), "10.0.0.52");
    }

    #[test]
    fn a_cut_or_garbled_read_is_an_error_not_a_panic() {
        let whole = route("10.244.1.0");
        let mut out = Vec::new();
        for cut in 1..whole.len() {
            let r = read_messages(&whole[..cut], &mut |m| route_entry(m, Family::V4), &mut out);
            assert!(r.is_err() || out.is_empty(), "cut at {cut}");
        }
        // A zero length field cannot make the walk spin.
        let zero = vec![0u8; 64];
        let _ = read_messages(&zero, &mut |m| route_entry(m, Family::V4), &mut out);
    }
}
