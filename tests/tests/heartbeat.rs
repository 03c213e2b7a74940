//! Heartbeat cadence through the real adapter, in paused (virtual) tokio time.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use uplink_tests::TestGateway;
use uplink_tokio::{Uplink, UplinkConfig};

#[tokio::test(start_paused = true)]
async fn heartbeats_leave_exactly_every_interval() {
    let gw = TestGateway::bind().await;
    let mut c = UplinkConfig::new(gw.url(), "beat");
    c.sled.heartbeat_interval = Duration::from_secs(3);
    c.sled.idle_timeout = Duration::from_secs(9);
    let uplink = Uplink::start(c).unwrap();
    let mut conn = gw.accept().await;
    assert_eq!(conn.recv().await["type"], "identity");
    let connected = tokio::time::Instant::now();
    for n in 1..=4u32 {
        let frame = conn.recv().await; // reading also answers the sled's pings
        assert_eq!(frame["type"], "heartbeat");
        assert_eq!(connected.elapsed(), Duration::from_secs(3) * n, "heartbeat {n}");
    }
    let (code, ()) = tokio::join!(conn.until_closed(), uplink.shutdown());
    assert_eq!(code, Some(1000));
}
