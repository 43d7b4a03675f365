//! `Strategy::pick` alone, for every strategy, over 10, 100 and 1,000 active machines.
//!
//! The views are built once per size (capacity 100, varied used capacity, every tenth
//! machine full so strategies have to skip some); the timed loop is one `pick` per
//! iteration with a client address that changes, so `consistent-hash` walks its ring.
//!
//! ```text
//! cargo bench --bench strategy
//! ```

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use elastic_lb::core::MachineId;
use elastic_lb::core::StrategyKind;
use elastic_lb::core::Units;
use elastic_lb::strategy::{self, MachineView, PickRequest};

fn views(n: u32) -> Vec<MachineView> {
    (1..=n)
        .map(|id| {
            // Deterministic spread of loads between 0 and 97 units.
            let used = u64::from(id.wrapping_mul(2_654_435_761) % 98);
            let full = id % 10 == 0;
            MachineView {
                id: MachineId(id),
                capacity: Units::from_whole(100),
                used: Units::from_whole(if full { 100 } else { used }),
                fits: !full,
            }
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    for n in [10u32, 100, 1_000] {
        let machines = views(n);
        for kind in StrategyKind::ALL {
            let strategy = strategy::build(kind, 42, 50.0);
            let mut client = 0u32;
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &machines, |b, m| {
                b.iter(|| {
                    client = client.wrapping_add(1);
                    let request = PickRequest {
                        client_ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (client & 0xffff))),
                        reservation: Units::from_whole(1),
                    };
                    black_box(strategy.pick(black_box(m), &request))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
