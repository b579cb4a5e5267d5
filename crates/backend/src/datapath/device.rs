//! Upkeep of the TUN devices of the userspace data path (udp and wireguard backends).

use crate::{BackendError, ReconcileReport};

/// Puts back a device's MTU and up state (TUN devices of the udp and wireguard backends); a
/// change after the first full pass (`configured`) counts as a device repair.
pub async fn keep_mtu_and_up<N: flannel_net::NetOps>(
    nl: &N,
    index: u32,
    mtu: u32,
    configured: bool,
    report: &mut ReconcileReport,
) -> Result<(), BackendError> {
    let Some(l) = nl.link_by_index(index).await? else {
        return Ok(());
    };
    if l.mtu != mtu || !l.up {
        report.repairs.device += usize::from(configured);
    }
    if l.mtu != mtu {
        nl.set_mtu(index, mtu).await?;
        report.added += 1;
    }
    if !l.up {
        nl.set_up(index).await?;
        report.added += 1;
    }
    Ok(())
}
