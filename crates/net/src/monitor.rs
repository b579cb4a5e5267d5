//! Kernel change notifications (`ip monitor`): deletions of links, addresses, routes and
//! neighbours, and link changes, wake the reconciler at once instead of at the next resync.
//! The reconciler decides what is ours; this only says "look now".

use futures::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Whether a notification may mean that state we own changed.
pub fn relevant(m: &RouteNetlinkMessage) -> bool {
    matches!(
        m,
        RouteNetlinkMessage::DelLink(_)
            | RouteNetlinkMessage::NewLink(_)
            | RouteNetlinkMessage::DelAddress(_)
            | RouteNetlinkMessage::DelRoute(_)
            | RouteNetlinkMessage::DelNeighbour(_)
    )
}

/// Sends `()` on `kick` for every relevant notification, for as long as `kick` is open. If the
/// socket fails (for example ENOBUFS when notifications outrun us) it kicks (a full resync
/// covers whatever was missed) and reconnects.
pub async fn watch(kick: mpsc::Sender<()>) {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Neigh,
    ];
    loop {
        match rtnetlink::new_multicast_connection(&groups) {
            Ok((mut conn, _handle, mut messages)) => {
                let _ = conn
                    .socket_mut()
                    .socket_mut()
                    .set_rx_buf_sz(4 * 1024 * 1024);
                let driver = tokio::spawn(conn);
                while let Some((m, _)) = messages.next().await {
                    let wake = match &m.payload {
                        NetlinkPayload::InnerMessage(inner) => relevant(inner),
                        // ENOBUFS: notifications were lost; a full resync covers them.
                        NetlinkPayload::Overrun(_) => {
                            warn!("netlink notifications overran the socket buffer; resyncing");
                            true
                        }
                        _ => false,
                    };
                    if wake && kick.try_send(()).is_err() && kick.is_closed() {
                        driver.abort();
                        return;
                    }
                }
                driver.abort();
                warn!("the netlink notification socket closed; resyncing and reconnecting");
            }
            Err(e) => warn!(error = %e, "cannot open a netlink notification socket; retrying"),
        }
        if kick.try_send(()).is_err() && kick.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
