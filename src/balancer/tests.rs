//! Unit tests of the dispatcher: admission, on-the-spot acquisition, drains.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::dispatcher::Dispatcher;
use super::handle::{AdmitError, Exhaustion};
use crate::backend::simulated::LocalFactory;
use crate::backend::{BackendContext, Job, Submitted};
use crate::config::Config;
use crate::core::{MachineState, RequestClass, Size, Units};
use crate::telemetry::Totals;

/// A dispatcher with a fixed reservation of `reservation` units per connection.
fn dispatcher(mut config: Config, reservation: f64) -> (Dispatcher, Arc<Totals>) {
    config.dispatcher.seed = 7;
    config.load.connection_min = reservation;
    config.load.connection_max = reservation;
    let config = Arc::new(config);
    let (_config_tx, config_rx) = watch::channel(config.clone());
    let totals = Arc::new(Totals::default());
    let ctx = BackendContext {
        config: config_rx,
        totals: totals.clone(),
        hard_stop: CancellationToken::new(),
    };
    let factory = Box::new(LocalFactory::new(&config, ctx));
    let (d, _topology) = Dispatcher::new(config, factory, totals.clone());
    (d, totals)
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn scale_up_keeps_the_average_at_or_below_the_threshold() {
    let (mut d, totals) = dispatcher(Config::default(), 10.0);
    let mut open = Vec::new();
    for i in 0..20 {
        open.push(d.admit(peer(1000 + i), &[]).unwrap());
        assert!(d.average_load() <= 50.0, "avg {}", d.average_load());
    }
    // 200 units at ≤ 50 % of 100-unit machines: four machines.
    assert_eq!(d.machines.len(), 4);
    assert_eq!(totals.snapshot().scale_ups, 3);
    drop(open);
    assert!(d.machines.iter().all(|m| m.info.used() == Units::ZERO));
}

/// The scale-up rebalance stops before a move would leave the newcomer above the machine
/// it relieves: three connections of 25 on a medium machine (75 %) become 50 + 25, not
/// 25 + 50 (which only mirrors the imbalance).
#[tokio::test]
async fn the_scale_up_rebalance_does_not_overshoot() {
    let (mut d, _totals) = dispatcher(Config::default(), 25.0);
    let open: Vec<_> = (0..3).map(|i| d.admit(peer(i), &[]).unwrap()).collect();
    let used: Vec<f64> = d.machines.iter().map(|m| m.info.used().as_f64()).collect();
    assert_eq!(used, [50.0, 25.0]);
    drop(open);
}

/// With machines left in the pool, a refusal names `max_machines` as the limit, not the
/// pool, so the operator looks at the right key.
#[tokio::test]
async fn a_refusal_at_max_machines_names_max_machines() {
    let mut config = Config::default();
    config.autoscaler.max_machines = 1;
    let (mut d, _totals) = dispatcher(config, 60.0);
    let first = d.admit(peer(1), &[]).unwrap();
    let refused = d.admit(peer(2), &[]).unwrap_err();
    assert_eq!(
        refused,
        AdmitError::Exhausted {
            reservation: Units::from_whole(60),
            limit: Exhaustion::MaxMachines(1),
        }
    );
    assert_eq!(
        refused.to_string(),
        "no machine can take the connection (reservation 60.00, max_machines = 1 reached)"
    );
    drop(first);
}

#[tokio::test]
async fn exhausted_pool_refuses_and_counts_the_reservation() {
    let mut config = Config::default();
    config.pool = crate::config::PoolConfig {
        small: 0,
        medium: 1,
        large: 0,
        xlarge: 0,
    };
    let (mut d, totals) = dispatcher(config, 60.0);
    let first = d.admit(peer(1), &[]).unwrap();
    assert_eq!(
        d.admit(peer(2), &[]).unwrap_err(),
        AdmitError::Exhausted {
            reservation: Units::from_whole(60),
            limit: Exhaustion::Pool,
        }
    );
    let t = totals.snapshot();
    assert_eq!((t.connections_admitted, t.connections_rejected), (1, 1));
    assert_eq!(t.weighted_failed, 60.0);
    drop(first);
}

#[tokio::test]
async fn on_the_spot_acquisition_skips_sizes_too_small_for_the_reservation() {
    let mut config = Config::default();
    config.autoscaler.initial = vec![Size::Small];
    config.autoscaler.scale_up_size = Size::Small; // capacity 50
    let (mut d, totals) = dispatcher(config, 60.0);
    let p = d.admit(peer(1), &[]).unwrap();
    // Small (50) cannot hold 60: the next larger size, medium, is taken instead.
    assert_eq!(p.machine().info.size, Size::Medium);
    assert_eq!(d.machines.len(), 2);
    assert_eq!(d.factory.free().small, 7, "no small machine taken in vain");
    assert_eq!(totals.snapshot().connections_rejected, 0);
}

#[tokio::test(start_paused = true)]
async fn drain_moves_connections_and_lets_queued_requests_finish() {
    let mut config = Config::default();
    config.autoscaler.initial = vec![Size::Medium, Size::Medium];
    config.load.requests.service_ms_per_unit = 100.0; // a LARGE takes 1 s on medium
    let (mut d, totals) = dispatcher(config, 10.0);
    let p1 = d.admit(peer(1), &[]).unwrap();
    let p2 = d.admit(peer(2), &[]).unwrap();
    assert_eq!(p1.machine().info.name, "m1");
    assert_eq!(p2.machine().info.name, "m2");

    // A slow request queued on m2 before it drains.
    let job = Job {
        class: RequestClass::Large,
        weight: Units::from_whole(10),
        payload: bytes::Bytes::new(),
        queued_at: tokio::time::Instant::now(),
    };
    let Ok(Submitted::Queued(reply_rx)) = p2.machine().try_submit(job) else {
        panic!("a slow request is queued");
    };

    d.drain(1, "load");
    let (m1, m2) = (d.machines[0].info.clone(), d.machines[1].info.clone());
    assert_eq!(m2.state(), MachineState::Draining);
    // The connection moved with its reservation; the queued request stayed.
    assert_eq!(p2.machine().info.name, "m1");
    assert_eq!(m1.reserved(), Units::from_whole(20));
    assert_eq!(m1.connections(), 2);
    assert_eq!(m2.reserved(), Units::ZERO);
    assert_eq!(m2.queued(), 1);

    // Not retired while its queue holds work.
    d.finish_drains();
    assert_eq!(d.machines.len(), 2);
    assert_eq!(&reply_rx.await.unwrap()[..], b"OK m2 large\n");
    d.finish_drains();
    assert_eq!(d.machines.len(), 1);
    assert_eq!(m2.state(), MachineState::Retired);
    assert_eq!(d.factory.free().medium, 7);
    assert_eq!(totals.snapshot().scale_downs, 1);

    // Closing releases from the machine the connection is on now.
    drop(p2);
    drop(p1);
    assert_eq!(m1.used(), Units::ZERO);
    assert_eq!(m2.used(), Units::ZERO);
}

#[tokio::test]
async fn migrated_connection_that_closes_mid_drain_leaks_nothing() {
    let mut config = Config::default();
    config.autoscaler.initial = vec![Size::Medium, Size::Medium];
    let (mut d, totals) = dispatcher(config, 10.0);
    let _p1 = d.admit(peer(1), &[]).unwrap();
    let p2 = d.admit(peer(2), &[]).unwrap();
    drop(p2); // closes before the drain finds it
    d.drain(1, "load");
    d.finish_drains();
    assert_eq!(d.machines.len(), 1);
    assert_eq!(d.machines[0].info.reserved(), Units::from_whole(10));
    assert_eq!(totals.snapshot().connections_open, 1);
}
