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

#[test]
fn failed_acquires_back_off_from_one_second_to_one_minute() {
    let secs: Vec<u64> = (1..=9).map(|n| acquire_backoff(n).as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
}
