//! The pool's bookkeeping: removal and draining, provider back-off.

use super::*;
use crate::core::Units;

fn pool() -> UpstreamPool {
    let policy = HealthPolicy {
        rise: 1,
        fall: 1,
        max_fails: 3,
        eject_for: Duration::from_secs(10),
        send_proxy: crate::config::SendProxy::Off,
    };
    UpstreamPool::new(Vec::new(), policy, Duration::from_millis(100), None)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn machine(id: u32) -> Arc<MachineInfo> {
    Arc::new(MachineInfo::new(
        MachineId(id),
        Size::Medium,
        Units::from_whole(100),
        8,
    ))
}

#[tokio::test]
async fn removal_drains_a_busy_upstream_and_a_reload_can_list_it_again() {
    let pool = pool();
    pool.add(addr(1), Size::Medium, None, Origin::Config)
        .expect("add");
    assert_eq!(
        pool.add(addr(1), Size::Medium, None, Origin::Admin),
        Err(AddError::Exists(addr(1)))
    );
    let upstream = pool.upstreams()[0].clone();
    upstream.set_initial(true);
    assert_eq!(pool.free().get(Size::Medium), 1);
    let m1 = machine(1);
    let taken = pool.take(Size::Medium, &m1).expect("healthy idle upstream");
    assert!(Arc::ptr_eq(&taken, &upstream));
    assert!(pool.take(Size::Medium, &machine(2)).is_none(), "in use");

    assert_eq!(pool.remove(addr(1)), Ok(Removed::Draining));
    assert_eq!(pool.take_retiring(), vec![MachineId(1)]);
    assert!(pool.take_retiring().is_empty(), "reported once");
    assert_eq!(pool.list()[0].state, "draining");
    // Listed again by a reload while draining, with another size and a limit: back,
    // fresh and as the file says, after the machine retired.
    pool.adopt(addr(1), Size::Large, Some(4));
    pool.give_back(&taken);
    let list = pool.list();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].state.as_str(), list[0].origin),
        ("idle", Origin::Config)
    );
    let rejoined = pool.upstreams()[0].clone();
    assert!(!Arc::ptr_eq(&rejoined, &upstream), "a new entry");
    assert_eq!(
        (rejoined.size, rejoined.max_connections()),
        (Size::Large, 4)
    );

    assert_eq!(
        pool.remove(addr(1)),
        Ok(Removed::Gone),
        "idle: gone at once"
    );
    assert!(pool.list().is_empty());
    assert_eq!(pool.remove(addr(1)), Err(RemoveError::Unknown(addr(1))));
}

/// Removed, listed again, removed again, all while its machine drains (three reloads): the
/// last word holds, and the upstream does not come back when the machine retires.
#[tokio::test]
async fn a_later_removal_cancels_a_pending_rejoin() {
    let pool = pool();
    pool.add(addr(1), Size::Medium, None, Origin::Config)
        .expect("add");
    pool.upstreams()[0].set_initial(true);
    let taken = pool.take(Size::Medium, &machine(1)).expect("idle upstream");
    assert_eq!(pool.remove(addr(1)), Ok(Removed::Draining));
    assert!(pool.configured().is_empty(), "removed");
    assert_eq!(
        pool.add(addr(1), Size::Medium, None, Origin::Admin),
        Err(AddError::Draining(addr(1)))
    );
    pool.adopt(addr(1), Size::Medium, None);
    assert_eq!(pool.configured(), [addr(1)], "to join again");
    // The next reload no longer lists it: it is removed again.
    assert_eq!(pool.remove(addr(1)), Ok(Removed::Draining));
    assert!(pool.configured().is_empty());
    pool.give_back(&taken);
    assert!(pool.list().is_empty(), "gone for good: {:?}", pool.list());
}

/// A reload that gives an upstream another size: an idle one is replaced at once; one that
/// backs a machine serves at its old size until that machine retires, then joins again at
/// the new one (unless a later reload sets the old size back).
#[tokio::test]
async fn a_reload_resizes_an_idle_upstream_at_once_and_a_busy_one_when_it_retires() {
    let pool = pool();
    pool.add(addr(1), Size::Medium, None, Origin::Admin)
        .expect("add");
    pool.adopt(addr(1), Size::Small, Some(3));
    let list = pool.list();
    assert_eq!(
        (
            list[0].size.as_str(),
            list[0].origin,
            list[0].max_connections
        ),
        ("small", Origin::Config, Some(3))
    );

    pool.add(addr(2), Size::Medium, None, Origin::Config)
        .expect("add");
    let busy = pool.upstreams()[1].clone();
    busy.set_initial(true);
    let taken = pool.take(Size::Medium, &machine(2)).expect("idle upstream");
    assert!(Arc::ptr_eq(&taken, &busy));
    pool.adopt(addr(2), Size::Large, None);
    assert_eq!(pool.list()[1].size, "medium", "serves at its old size");
    assert_eq!(pool.list()[1].state, "active");
    pool.give_back(&taken);
    let resized = pool.upstreams()[1].clone();
    assert!(!Arc::ptr_eq(&resized, &busy), "a new entry");
    assert_eq!(resized.size, Size::Large);
    assert_eq!(pool.list()[1].state, "idle");

    // Resized and set back before its machine retired: nothing changes.
    resized.set_initial(true);
    let taken = pool.take(Size::Large, &machine(3)).expect("idle upstream");
    pool.adopt(addr(2), Size::Medium, None);
    pool.adopt(addr(2), Size::Large, None);
    pool.give_back(&taken);
    assert!(Arc::ptr_eq(&pool.upstreams()[1], &resized), "kept");
}

#[test]
fn failed_acquires_back_off_from_one_second_to_one_minute() {
    let secs: Vec<u64> = (1..=9).map(|n| acquire_backoff(n).as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
}
