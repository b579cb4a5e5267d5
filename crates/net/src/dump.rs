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

    let mut complete = true;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    loop {
        buf.clear();
        // The kernel fills each dump read with whole messages, up to `READ_SIZE`; a cut one
        // would fail to parse below and end the dump with an error, never be half-read.
        socket.recv(&mut buf).await.map_err(io_error)?;
        if buf.is_empty() {
            return Err(io_error(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| rtnetlink::Error::InvalidNla(format!("dump message: {e}")))?;
            // Messages are 4-byte aligned; a length the buffer cannot hold ends the read.
            let len = (m.header.length as usize + 3) & !3;
            if m.header.flags & NLM_F_DUMP_INTR != 0 {
                complete = false;
            }
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(complete),
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
    }
}

/// A socket error, as the kernel's errno in rtnetlink's error type (callers read `errno()`).
fn io_error(e: std::io::Error) -> rtnetlink::Error {
    let mut m = ErrorMessage::default();
    m.code = NonZeroI32::new(-e.raw_os_error().unwrap_or(EIO));
    rtnetlink::Error::NetlinkError(m)
}

const EIO: i32 = 5;
