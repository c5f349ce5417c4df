//! Taking one stats record: a guest's report becomes a sample only when it is fresh and
//! describes the size the guest has now; what it claims is checked against the host.

use super::{Guest, MAX_SAMPLES, RSS_SLACK, SizeReading};
use crate::hypervisor::GuestStats;
use crate::planner::Sample;
use crate::units::Bytes;

impl Guest {
    /// Take one bulk-stats record. Returns true when it carried a fresh guest report.
    pub fn observe(&mut self, mut s: GuestStats, now: f64) -> bool {
        let prev_update = self.stats.as_ref().map(|p| p.last_update).unwrap_or(0);
        if s.last_update == 0
            && prev_update > 0
            && let Some(prev) = &self.stats
        {
            // No guest report in this record after one before: libvirt leaves the guest's
            // statistics out when it cannot ask QEMU without waiting (a job on the domain, as
            // while a migration finishes). The guest did report: its last word stands and
            // ages (stale in time), rather than "never reported".
            s.guest = prev.guest;
            s.last_update = prev.last_update;
            s.rss = s.rss.or(prev.rss);
        }
        let fresh = s.last_update > prev_update && s.last_update > 0;
        // Its size first: every record carries the claim, and the sample below is booked at
        // the size believed, not the size claimed.
        let reading = self.size_reading_with(Some(&s));
        self.judge_size(&s, &reading);
        if fresh && (s.last_update as f64) > self.settled_at && self.pending.is_none() {
            let g = &s.guest;
            let swap_rate = match (self.prev_swap_in, g.swap_in) {
                (Some((t0, v0)), Some(v1)) if s.last_update > t0 => {
                    if v1 < v0 {
                        // A counter going backwards: a guest reboot or a lie. Count, use zero.
                        self.hostile += 1;
                        0.0
                    } else {
                        (v1.0 - v0.0) as f64 / (s.last_update - t0) as f64
                    }
                }
                _ => 0.0,
            };
            let size = reading.claimed.map(|_| reading.believed);
            if let (Some(total), Some(avail), Some(size)) = (g.total, g.usable, size) {
                if avail > total || total > size + Bytes::from_mib(64) {
                    self.hostile += 1;
                }
                // A guest cannot use memory it never touched: a claim that grows beyond what
                // its QEMU process holds on the host (plus slack) is a lie or a broken driver.
                // Believe the host: such a guest gains nothing by reporting no free memory.
                // RSS is a lower bound only for memory touched on this host: a guest that
                // arrived by live migration holds its zero pages unbacked (the migration
                // skips them), so the unbacked part of its use at first sight here is not
                // held against it (seen: a guest migrated in was believed at its RSS, a
                // quarter of its use, and starved). It only shrinks as the host backs more.
                let mut avail = avail;
                let claimed = total.saturating_sub(avail.min(total));
                let capped = match s.rss {
                    Some(rss) => {
                        let unbacked = claimed.saturating_sub(rss);
                        let known = self.unbacked.map_or(unbacked, |u| u.min(unbacked));
                        self.unbacked = Some(known);
                        let limit = rss
                            .saturating_add(RSS_SLACK.max(total.scale(0.1)))
                            .saturating_add(known);
                        if claimed > limit {
                            avail = total.saturating_sub(limit);
                            true
                        } else {
                            false
                        }
                    }
                    None => false,
                };
                if capped {
                    self.hostile += 1;
                    if !self.rss_capped {
                        tracing::warn!(guest = %s.name, claimed = %claimed, rss = %s.rss.unwrap_or_default(),
                            "guest claims to use more memory than its process holds on the host; believing the host");
                    }
                } else if self.rss_capped {
                    tracing::info!(guest = %s.name, "guest's reports agree with the host again");
                }
                self.rss_capped = capped;
                self.samples.push_back(Sample {
                    at: s.last_update as f64,
                    size,
                    total,
                    available: avail,
                    swap_in_rate: swap_rate,
                });
                while self.samples.len() > MAX_SAMPLES
                    || self.samples.front().is_some_and(|f| f.at < now - 3600.0)
                {
                    self.samples.pop_front();
                }
            }
        }
        if fresh && let Some(v) = s.guest.swap_in {
            self.prev_swap_in = Some((s.last_update, v));
        }
        self.name = s.name.clone();
        self.stats = Some(s);
        fresh
    }

    /// Report a size claim that changed from believed to disputed (or back): once, with the
    /// numbers, as a hostile report.
    fn judge_size(&mut self, s: &GuestStats, r: &SizeReading) {
        let name = &s.name;
        if r.dispute == self.size_dispute {
            return;
        }
        match r.dispute {
            Some(d) => {
                self.hostile = self.hostile.saturating_add(1);
                tracing::warn!(guest = %name, dispute = d.label(),
                    claimed_kib = r.claimed.map(|c| c.0 / 1024).unwrap_or(0),
                    believed = %r.believed, maximum = %self.size_limit_with(Some(s)).unwrap_or_default(),
                    rss = %s.rss.unwrap_or_default(),
                    "guest's claimed size is not believed; booking it at the size it may hold");
            }
            None => {
                tracing::info!(guest = %name, "guest's claimed size agrees with the host again")
            }
        }
        self.size_dispute = r.dispute;
    }
}
