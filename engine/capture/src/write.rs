//! `--write-pcapng`: the packets a diff is about, from both captures, with comments saying
//! what differs — open it in Wireshark next to the report.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::diff::{Change, DiffReport};
use crate::file::{Capture, Iface, Record, write_pcapng};

/// Writes the differing packets of `report` (record numbers refer to `a` and `b`).
pub fn write_diff_pcapng(
    path: &Path,
    a: &Capture,
    b: &Capture,
    report: &DiffReport,
) -> Result<usize> {
    let mut out = Capture::default();
    let mut iface_ids: BTreeMap<(char, usize), usize> = BTreeMap::new();
    let mut add = |side: char, cap: &Capture, index: usize, note: String, out: &mut Capture| {
        let Some(rec) = index.checked_sub(1).and_then(|i| cap.records.get(i)) else {
            return;
        };
        let id = *iface_ids.entry((side, rec.iface)).or_insert_with(|| {
            let src = cap.ifaces.get(rec.iface);
            out.ifaces.push(Iface {
                name: format!("{side}: {}", src.map_or("?", |i| i.name.as_str())),
                link: src.map_or(crate::file::LinkType::Raw, |i| i.link),
                snaplen: 0,
            });
            out.ifaces.len() - 1
        });
        let comment = match &rec.comment {
            Some(c) => format!("{note} | {c}"),
            None => note,
        };
        out.records.push(Record {
            iface: id,
            comment: Some(comment),
            ..rec.clone()
        });
    };
    for c in &report.changes {
        match c {
            Change::Missing { a: i, .. } => {
                add('A', a, *i, format!("missing in B: {}", c.line()), &mut out)
            }
            Change::Added { b: j, .. } => {
                add('B', b, *j, format!("added in B: {}", c.line()), &mut out)
            }
            Change::Changed { a: i, b: j, .. }
            | Change::Reordered { a: i, b: j, .. }
            | Change::Timing { a: i, b: j, .. } => {
                add('A', a, *i, c.line(), &mut out);
                add('B', b, *j, c.line(), &mut out);
            }
            Change::FlowMissing { a: i, .. } => add(
                'A',
                a,
                *i,
                format!("first packet of a flow missing in B: {}", c.flow()),
                &mut out,
            ),
            Change::FlowAdded { b: j, .. } => add(
                'B',
                b,
                *j,
                format!("first packet of a flow added in B: {}", c.flow()),
                &mut out,
            ),
            Change::Volume { .. } => {}
        }
    }
    out.records.sort_by_key(|r| r.ts_ns);
    write_pcapng(path, &out)?;
    Ok(out.records.len())
}
