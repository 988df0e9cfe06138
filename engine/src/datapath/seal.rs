//! Sealing one tunnel packet into a send batch: one data packet, or with `fragment` as many
//! as its fragments need. Used by the tx thread and by client-to-client forwarding.

use tunscope_proto::client::DataPlane;
use tunscope_proto::data::{self, DataKeys, Framing};
use tunscope_proto::fragment::{Fragmenter, WHOLE};
use tunscope_proto::stage::DropReason;

use crate::link::TxBatch;

/// Seals `p` for `plane` into `batch`; returns how many data packets it became. (Sealing
/// fails only when a packet is too big or packet-ids run out; fragments sealed before such a
/// failure stay in the batch and are sent.)
pub fn seal_packet(
    keys: &DataKeys,
    plane: &DataPlane,
    p: &[u8],
    scratch: &mut Vec<u8>,
    batch: &mut TxBatch,
) -> Result<usize, DropReason> {
    match &plane.fragment {
        Some(frag) if frag.needs_cutting(p.len() + plane.framing.overhead()) => {
            seal_cut(keys, plane, frag, p, scratch, batch)
        }
        _ => {
            let out = batch.reserve(data::seal_room(p.len()));
            match plane.seal_whole(keys, p, out) {
                Ok(l) => {
                    batch.commit(l);
                    Ok(1)
                }
                Err(r) => {
                    batch.abort();
                    Err(r)
                }
            }
        }
    }
}

/// A packet that may not fit one fragment: framed first (compression can make it fit after
/// all), then cut; each fragment sealed with its own header and packet-id.
fn seal_cut(
    keys: &DataKeys,
    plane: &DataPlane,
    frag: &Fragmenter,
    p: &[u8],
    scratch: &mut Vec<u8>,
    batch: &mut TxBatch,
) -> Result<usize, DropReason> {
    scratch.resize(data::seal_room(p.len()), 0);
    let n = plane.framing.encode(p, scratch).ok_or(DropReason::TooBig)?;
    let framed = &scratch[..n];
    let header = plane.header(keys);
    let mut seal = |prefix: &[u8], piece: &[u8]| {
        let out = batch.reserve(data::seal_room(piece.len()));
        match keys.seal_prefixed(header, prefix, Framing::None, piece, out) {
            Ok(l) => {
                batch.commit(l);
                Ok(())
            }
            Err(r) => {
                batch.abort();
                Err(r)
            }
        }
    };
    if !frag.needs_cutting(n) {
        seal(&WHOLE, framed)?;
        return Ok(1);
    }
    let mut count = 0;
    for (head, piece) in frag.cut(framed).ok_or(DropReason::TooBig)? {
        seal(&head, piece)?;
        count += 1;
    }
    Ok(count)
}
