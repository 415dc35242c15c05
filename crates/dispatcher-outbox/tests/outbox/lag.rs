//! The stream side the relay watches: a consumer group's lag against `REDIS_STREAM_MAXLEN`, read from the
//! real Redis (`XINFO GROUPS`), as the relay's lag gauges and warning see it.

use dispatcher_outbox::publish::{self, EntryValues, Published, StreamPublisher};

#[tokio::test]
async fn group_lag_against_the_trimming_limit_is_reported() {
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "lag:outbox";
    let conn = publish::connect(&redis.url()).await.expect("connect");
    // A missing stream has no groups and length 0 (the relay may start before anything is published).
    let empty = publish::stream_info(&conn, stream).await.expect("info");
    assert_eq!((empty.length, empty.groups.len()), (0, 0));

    redis
        .command(&["XGROUP", "CREATE", stream, "consumers", "$", "MKSTREAM"])
        .expect("create group");
    let publisher = StreamPublisher::new(conn.clone(), stream, 100);
    let ids: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    let entries: Vec<EntryValues<'_>> = ids
        .iter()
        .map(|id| {
            [
                id.as_str(),
                "e",
                "T",
                "agg",
                "2026-12-01T00:00:00.000000Z",
                id.as_str(),
                "{}",
            ]
        })
        .collect();
    assert_eq!(
        publisher.publish(&entries).await.expect("publish"),
        Published::All
    );

    let info = publisher.stream_info().await.expect("info");
    assert_eq!(info.length, 60);
    let g = info
        .groups
        .iter()
        .find(|g| g.name == "consumers")
        .expect("the group");
    assert_eq!(g.lag, Some(60), "nothing read yet");
    assert_eq!(publish::lag_ratio(g.lag, 100), Some(0.6));

    // The group reads 50 entries: its lag drops, and what it read is pending until acknowledged.
    redis
        .command(&[
            "XREADGROUP",
            "GROUP",
            "consumers",
            "c1",
            "COUNT",
            "50",
            "STREAMS",
            stream,
            ">",
        ])
        .expect("read");
    let info = publisher.stream_info().await.expect("info");
    let g = info
        .groups
        .iter()
        .find(|g| g.name == "consumers")
        .expect("the group");
    assert_eq!(g.lag, Some(10));
    assert_eq!(g.pending, 50);
    assert!(
        publish::lag_ratio(g.lag, 100).expect("ratio") < 0.8,
        "no warning now"
    );

    // 250 more entries: the unread part is past the limit the relay trims to (ratio ≥ 1 = loss).
    let more: Vec<String> = (60..310).map(|i| i.to_string()).collect();
    let entries: Vec<EntryValues<'_>> = more
        .iter()
        .map(|id| {
            [
                id.as_str(),
                "e",
                "T",
                "agg",
                "2026-12-01T00:00:00.000000Z",
                id.as_str(),
                "{}",
            ]
        })
        .collect();
    assert_eq!(
        publisher.publish(&entries).await.expect("publish"),
        Published::All
    );
    let info = publisher.stream_info().await.expect("info");
    let g = info
        .groups
        .iter()
        .find(|g| g.name == "consumers")
        .expect("the group");
    let ratio = publish::lag_ratio(g.lag, 100);
    assert!(
        g.lag.is_none() || ratio.expect("ratio") >= 1.0,
        "lag {:?} of MAXLEN 100 after trimming past unread entries",
        g.lag
    );
    assert!(
        info.length < 310,
        "MAXLEN ~ 100 trimmed the stream: {}",
        info.length
    );
}
