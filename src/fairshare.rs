//! Sharing a host's memory when its guests together want more than it has.
//!
//! Each guest claims four amounts: its floor (never taken), its need (what it uses plus the
//! policy's minimum free), its keep (need plus the policy's headroom) and its want (what the
//! planner asks for, or its size on a hold). What a guest holds past its keep is its
//! **cushion**: room kept for a peak it showed within `peak_window`, or memory a shrink has
//! not given back yet. When the wants do not fit, idle memory is taxed first, in the spirit of
//! VMware ESX's idle-memory tax: every floor is granted, then every need, then every keep,
//! and cushions only from what is left. So a cushion is given back before any other guest's
//! headroom or need is touched: it is a bet on demand that may come back, the headroom is
//! the room a guest in use runs on. Each tier that does not fit is shared by weighted
//! water-filling on `shares`: no guest gets more than it claims, and whatever a guest does not
//! claim goes to the others in proportion to their shares. A guest that claims everything (a
//! liar reporting no free memory) gets at most its weighted share of what is contested.
//!
//! Pure arithmetic: no clock, no I/O; the daemon's host loop and the simulator's host mode
//! call it alike.

use crate::units::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub floor: Bytes,
    pub need: Bytes,
    /// Need plus headroom: what is granted before any guest's cushion (its want past this).
    pub keep: Bytes,
    pub want: Bytes,
    pub shares: u32,
}

impl Claim {
    /// The claim made consistent: floor ≤ need ≤ keep ≤ want.
    fn normal(&self) -> (u64, u64, u64, u64) {
        let f = self.floor.0;
        let w = self.want.0.max(f);
        let n = self.need.0.clamp(f, w);
        let k = self.keep.0.clamp(n, w);
        (f, n, k, w)
    }
}

/// Weighted max-min fair division of `capacity` among demands: each gets
/// `min(demand, level × weight)` with the level chosen so the sum is `capacity` (or every
/// demand is met).
fn water_fill(demand: &[u64], weight: &[u64], capacity: u64) -> Vec<u64> {
    let total: u128 = demand.iter().map(|&d| d as u128).sum();
    if total <= capacity as u128 {
        return demand.to_vec();
    }
    let mut order: Vec<usize> = (0..demand.len()).filter(|&i| demand[i] > 0).collect();
    // Guests fill up in the order of demand per unit of weight.
    order.sort_by(|&a, &b| {
        let x = demand[a] as u128 * weight[b].max(1) as u128;
        let y = demand[b] as u128 * weight[a].max(1) as u128;
        x.cmp(&y)
    });
    let mut out = vec![0u64; demand.len()];
    let mut left = capacity as u128;
    let mut w_left: u128 = order.iter().map(|&i| weight[i].max(1) as u128).sum();
    for (k, &i) in order.iter().enumerate() {
        let w = weight[i].max(1) as u128;
        // What this guest gets at the current level.
        let fair = left * w / w_left.max(1);
        if (demand[i] as u128) <= fair {
            out[i] = demand[i];
            left -= demand[i] as u128;
            w_left -= w;
        } else {
            // Every remaining guest is capped by the level: share what is left by weight.
            let rest = &order[k..];
            let mut given = 0u128;
            for &j in rest {
                let g = (left * weight[j].max(1) as u128 / w_left.max(1)).min(demand[j] as u128);
                out[j] = g as u64;
                given += g;
            }
            // Rounding leaves a few bytes; they stay with the host.
            debug_assert!(given <= left);
            break;
        }
    }
    out
}

/// The sizes to grant when the host can give its guests `available` bytes in all. Floors are
/// always granted, even past `available` (then only moving a guest away helps).
pub fn share(claims: &[Claim], available: Bytes) -> Vec<Bytes> {
    let norm: Vec<(u64, u64, u64, u64)> = claims.iter().map(Claim::normal).collect();
    let weight: Vec<u64> = claims.iter().map(|c| c.shares.max(1) as u64).collect();
    // Saturating: a claim comes from what a guest reports, and may be absurd.
    let floors: u64 = norm.iter().fold(0u64, |a, n| a.saturating_add(n.0));
    let mut left = available.0.saturating_sub(floors);
    let mut granted: Vec<u64> = norm.iter().map(|n| n.0).collect();
    // Needs, then headroom, then cushions: a tier is shared only once every claim of the one
    // before it is met.
    for tier in 0..3 {
        let claimed: Vec<u64> = norm
            .iter()
            .map(|&(f, n, k, w)| [n - f, k - n, w - k][tier])
            .collect();
        let got = water_fill(&claimed, &weight, left);
        left = left.saturating_sub(got.iter().fold(0u64, |a, g| a.saturating_add(*g)));
        for (g, x) in granted.iter_mut().zip(&got) {
            *g = g.saturating_add(*x);
        }
        if got != claimed {
            break;
        }
    }
    granted.into_iter().map(Bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mib(m: u64) -> Bytes {
        Bytes::from_mib(m)
    }

    /// A claim whose want is all headroom (no cushion).
    fn c(floor: u64, need: u64, want: u64, shares: u32) -> Claim {
        ck(floor, need, want, want, shares)
    }

    fn ck(floor: u64, need: u64, keep: u64, want: u64, shares: u32) -> Claim {
        Claim {
            floor: mib(floor),
            need: mib(need),
            keep: mib(keep),
            want: mib(want),
            shares,
        }
    }

    #[test]
    fn idle_headroom_is_taken_before_any_need() {
        // A is idle with 3 GiB of headroom; B needs 3 GiB and wants 1 GiB more.
        let claims = [c(512, 1024, 4096, 1000), c(512, 3072, 4096, 1000)];
        let g = share(&claims, mib(6144));
        assert_eq!(g[0].0 + g[1].0, mib(6144).0);
        assert!(g[1] >= mib(3072), "the short guest's need is met: {g:?}");
        // The headroom left (2 GiB) is split evenly: 1 GiB each.
        assert_eq!(g, vec![mib(2048), mib(4096)]);
    }

    #[test]
    fn a_cushion_is_given_back_before_any_headroom() {
        // A is idle at 2.5 GiB after a spike: it needs 1 GiB, keeps 1.5 GiB (need plus
        // headroom), the rest is its cushion. B climbs: it needs 3 GiB and wants 1.5 GiB of
        // headroom on top. 6 GiB: everything but 1 GiB of A's cushion fits.
        let claims = [
            ck(512, 1024, 1536, 2560, 1000),
            ck(512, 3072, 4608, 4608, 1000),
        ];
        let g = share(&claims, mib(6144));
        assert_eq!(g, vec![mib(1536), mib(4608)]);
        // Room for part of the cushion: A keeps what is left once B has its headroom.
        let g = share(&claims, mib(6656));
        assert_eq!(g, vec![mib(2048), mib(4608)]);
        // Not even the headrooms fit: A's cushion is all gone and what is left above the
        // needs (768 MiB) is shared as headroom, evenly.
        let g = share(&claims, mib(4864));
        assert_eq!(g, vec![mib(1408), mib(3456)]);
    }

    #[test]
    fn needs_beyond_the_host_are_shared_by_shares() {
        let claims = [c(0, 4096, 4096, 2000), c(0, 4096, 4096, 1000)];
        let g = share(&claims, mib(3072));
        assert_eq!(g, vec![mib(2048), mib(1024)]);
    }

    #[test]
    fn a_guest_claiming_everything_gets_its_share_not_more() {
        // The liar says it needs its whole ceiling; two honest guests need 1 GiB each.
        let claims = [
            c(256, 16384, 16384, 1000),
            c(256, 1024, 1536, 1000),
            c(256, 1024, 1536, 1000),
        ];
        let g = share(&claims, mib(6144));
        assert!(g[1] >= mib(1024) && g[2] >= mib(1024), "{g:?}");
        // Contested above the floors: 6144 - 768 = 5376 MiB; a third is 1792 MiB.
        assert!(g[0] <= mib(256 + 5376 - 2 * 768), "{g:?}");
        let total: u64 = g.iter().map(|b| b.0).sum();
        assert!(total <= mib(6144).0);
    }

    #[test]
    fn floors_hold_even_when_they_do_not_fit() {
        let claims = [c(2048, 3000, 4000, 1000), c(2048, 2048, 4000, 1000)];
        assert_eq!(share(&claims, mib(3000)), vec![mib(2048), mib(2048)]);
    }

    proptest! {
        #[test]
        fn grants_are_fair_and_fit(
            raw in prop::collection::vec(
                (0u64..4096, 0u64..8192, 0u64..8192, 0u64..8192, 1u32..4000),
                1..12,
            ),
            avail in 0u64..40_000,
        ) {
            let claims: Vec<Claim> =
                raw.iter().map(|&(f, n, k, w, s)| ck(f, n, k, w, s)).collect();
            let g = share(&claims, mib(avail));
            let floors: u64 = claims.iter().map(|c| c.floor.0).sum();
            let total: u64 = g.iter().map(|b| b.0).sum();
            prop_assert!(total <= mib(avail).0.max(floors));
            let wants: u64 = claims.iter().map(|c| c.want.0.max(c.floor.0)).sum();
            let needs: u64 = claims.iter().map(|c| c.normal().1).sum();
            let keeps: u64 = claims.iter().map(|c| c.normal().2).sum();
            let cushioned = claims.iter().zip(&g).any(|(cl, gr)| gr.0 > cl.normal().2);
            for (cl, gr) in claims.iter().zip(&g) {
                let (f, n, k, w) = cl.normal();
                prop_assert!(gr.0 >= f && gr.0 <= w, "{cl:?} got {gr}");
                if wants <= mib(avail).0 {
                    prop_assert_eq!(gr.0, w);
                }
                if needs <= mib(avail).0 {
                    prop_assert!(gr.0 >= n, "need met before headroom: {cl:?} got {gr}");
                }
                if keeps <= mib(avail).0 {
                    prop_assert!(gr.0 >= k, "headroom met before cushions: {cl:?} got {gr}");
                }
                // No guest keeps a cushion while another is short of its headroom.
                if cushioned {
                    prop_assert!(gr.0 >= k, "a cushion kept over {cl:?}'s headroom: {gr}");
                }
            }
            // Nothing is left on the table while someone still wants more.
            if total < mib(avail).0 {
                let unmet = claims.iter().zip(&g).any(|(cl, gr)| gr.0 < cl.normal().3);
                // Only integer rounding may leave a few bytes.
                prop_assert!(!unmet || mib(avail).0 - total < 64 * claims.len() as u64);
            }
        }
    }
}
