//! Choosing a live migration when sharing a host is not enough: which guest to move and where.
//!
//! Pure arithmetic over what the host loops publish. The guest moved is the cheapest one whose
//! departure covers the host's deficit (the smallest that does; the largest if none does alone,
//! so the fewest moves follow); the destination is the host with the most room after its own
//! reserve, what its guests hold and the arrivals already promised to it, among those where the
//! guest fits.

use crate::units::Bytes;

/// A guest that may be moved (not pinned, not resizing, running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// Memory it holds now: what leaves the source and arrives at the destination.
    pub size: Bytes,
    /// Its use climbs (its trend takes its need up): a guest is held at its size while it
    /// moves, so a climbing one may run out before it arrives (seen on the test bed's real
    /// Nova: a guest climbing at 16 MiB/s panicked, out of memory, mid-move). Moved only when
    /// no steady guest relieves the host.
    pub climbing: bool,
}

/// A host that may receive a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    /// Capacity minus reserve minus what its guests hold minus arrivals promised to it.
    pub room: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub guest: String,
    pub to: String,
    pub size: Bytes,
}

/// What the host is short of: the needs it cannot hold (floors and needs beyond capacity
/// minus reserve). Zero when sharing covers it.
pub fn deficit(needs: Bytes, capacity: Bytes, reserve: Bytes) -> Bytes {
    needs.saturating_sub(capacity.saturating_sub(reserve))
}

/// Pick one move relieving `deficit`, or none when no guest fits anywhere.
pub fn pick(
    deficit: Bytes,
    candidates: &[Candidate],
    destinations: &[Destination],
) -> Option<Move> {
    if deficit.0 == 0 {
        return None;
    }
    let best_dest = |size: Bytes| {
        destinations
            .iter()
            .filter(|d| d.room >= size)
            .max_by(|a, b| a.room.cmp(&b.room).then(b.name.cmp(&a.name)))
    };
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    // Steady guests before climbing ones; among them, those that cover the deficit alone,
    // smallest first; then the rest, largest first.
    order.sort_by(|a, b| {
        let (ca, cb) = (a.size >= deficit, b.size >= deficit);
        a.climbing
            .cmp(&b.climbing)
            .then(cb.cmp(&ca))
            .then(if ca {
                a.size.cmp(&b.size)
            } else {
                b.size.cmp(&a.size)
            })
            .then(a.name.cmp(&b.name))
    });
    order.into_iter().find_map(|c| {
        best_dest(c.size).map(|d| Move {
            guest: c.name.clone(),
            to: d.name.clone(),
            size: c.size,
        })
    })
}

/// Where a live migration's memory stream goes when no `migration_address` is set: `tcp://`
/// and the host of the destination's libvirt URI (`qemu+tcp://10.0.0.3/system` gives
/// `tcp://10.0.0.3`; user and port are dropped, an IPv6 literal keeps its brackets). None for a
/// URI without a host (`qemu:///system`), where libvirt's default stands.
pub fn data_uri_from(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        format!("[{}]", v6.split_once(']')?.0)
    } else {
        host_port.split(':').next().unwrap_or("").to_string()
    };
    (!host.is_empty() && host != "[]").then(|| format!("tcp://{host}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_data_uri_is_the_destination_uris_host() {
        for (uri, want) in [
            ("qemu+tcp://10.0.0.3/system", Some("tcp://10.0.0.3")),
            ("qemu+tcp://bed3:16509/system", Some("tcp://bed3")),
            (
                "qemu+ssh://root@host.example/system?keyfile=k",
                Some("tcp://host.example"),
            ),
            ("qemu+tls://[fd00::3]:16514/system", Some("tcp://[fd00::3]")),
            ("qemu:///system", None),
            ("test:///default", None),
            ("not a uri", None),
        ] {
            assert_eq!(data_uri_from(uri).as_deref(), want, "{uri}");
        }
    }

    use super::*;

    fn c(n: &str, mib: u64) -> Candidate {
        Candidate {
            name: n.into(),
            size: Bytes::from_mib(mib),
            climbing: false,
        }
    }
    fn d(n: &str, mib: u64) -> Destination {
        Destination {
            name: n.into(),
            room: Bytes::from_mib(mib),
        }
    }

    #[test]
    fn the_smallest_guest_that_covers_the_deficit_goes_where_there_is_most_room() {
        let m = pick(
            Bytes::from_mib(300),
            &[c("big", 4096), c("mid", 800), c("small", 200)],
            &[d("b", 2000), d("c", 3000)],
        );
        assert_eq!(
            m,
            Some(Move {
                guest: "mid".into(),
                to: "c".into(),
                size: Bytes::from_mib(800)
            })
        );
    }

    #[test]
    fn without_a_single_cover_the_largest_that_fits_moves() {
        let m = pick(
            Bytes::from_mib(5000),
            &[c("big", 4096), c("mid", 800)],
            &[d("b", 1000)],
        );
        assert_eq!(m.map(|m| m.guest), Some("mid".into()), "big fits nowhere");
        assert_eq!(pick(Bytes(0), &[c("a", 1)], &[d("b", 10)]), None);
        assert_eq!(pick(Bytes(1), &[c("a", 100)], &[d("b", 10)]), None);
    }

    #[test]
    fn a_climbing_guest_moves_only_when_no_steady_one_can() {
        let climbing = Candidate {
            climbing: true,
            ..c("climber", 800)
        };
        // The climber is the best cover by size, but a steady guest relieves the host too.
        let m = pick(
            Bytes::from_mib(300),
            &[climbing.clone(), c("steady", 2000)],
            &[d("b", 3000)],
        );
        assert_eq!(m.map(|m| m.guest), Some("steady".into()));
        // With no steady guest that fits anywhere, the climber still goes.
        let m = pick(
            Bytes::from_mib(300),
            &[climbing, c("steady", 4000)],
            &[d("b", 3000)],
        );
        assert_eq!(m.map(|m| m.guest), Some("climber".into()));
    }

    #[test]
    fn deficit_counts_the_reserve() {
        assert_eq!(
            deficit(
                Bytes::from_mib(2000),
                Bytes::from_mib(2048),
                Bytes::from_mib(256)
            ),
            Bytes::from_mib(208)
        );
        assert_eq!(
            deficit(
                Bytes::from_mib(1000),
                Bytes::from_mib(2048),
                Bytes::from_mib(256)
            ),
            Bytes(0)
        );
    }
}
