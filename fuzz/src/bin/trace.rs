//! The trace reader: any bytes give a trace or an error naming its place, never a panic; a
//! trace read has sorted samples, none above its capacity.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let opts = memscale::trace::ReadOptions::default();
        let r = std::io::BufReader::new(data);
        match memscale::trace::read_bitbrains(r, "fuzz.csv", &opts) {
            Ok(t) => {
                for vm in &t.vms {
                    assert!(
                        vm.times.windows(2).all(|w| w[0] < w[1]),
                        "times out of order"
                    );
                    assert!(
                        vm.demand.iter().all(|d| *d <= vm.ceiling.0),
                        "demand above capacity"
                    );
                    assert_eq!(vm.times.len(), vm.demand.len());
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    });
}
