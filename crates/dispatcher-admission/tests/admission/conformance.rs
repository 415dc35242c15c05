//! The conformance suite: every scenario runs against the in-process store, Redis and Redis Cluster.

use std::collections::HashSet;
use std::sync::Arc;

use dispatcher_admission::{
    AdmissionError, AdmissionStore, BulkOutcome, Clock, EventId, EventSettings, EventState,
    Promoter, PromoterOptions, QueueMode, Release, TicketId, TicketState, UserId,
};

use crate::common::T0;

fn ev(s: &str) -> EventId {
    EventId::new(s).expect("valid event id")
}

fn settings(capacity: u64) -> EventSettings {
    EventSettings {
        session_ttl_ms: 10_000,
        abandon_timeout_ms: 60_000,
        ..EventSettings::with_capacity(capacity)
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { let c = dispatcher_admission::Clock::manual(crate::common::T0); super::$name(crate::common::memory(c.clone()), c).await; })*
        }
        mod redis {
            $(#[tokio::test] async fn $name() { let c = dispatcher_admission::Clock::manual(crate::common::T0); super::$name(crate::common::redis(c.clone()).await, c).await; })*
        }
        mod cluster {
            $(#[tokio::test] async fn $name() { let c = dispatcher_admission::Clock::manual(crate::common::T0); super::$name(crate::common::cluster(c.clone()).await, c).await; })*
        }
    };
}

conformance!(
    join_orders_by_sequence_and_admits_within_capacity,
    join_is_idempotent_per_user_while_live,
    complete_admits_next_in_the_same_step,
    expiry_frees_each_slot_exactly_once,
    abandon_drops_silent_waiters_only,
    lowering_capacity_evicts_nobody,
    pause_resume_and_close,
    rate_limits_admissions,
    registry_tracks_active_events_by_itself,
    bad_input_changes_nothing,
    final_tickets_are_retained_then_purged,
    entry_stream_records_every_admission,
    leave_and_revoke_free_slots,
    promoter_admits_at_the_ttl_instant,
    many_events_spread_over_shards,
    bulk_release_ends_each_ticket_once_and_refills,
    a_release_after_the_session_ended_expires_the_ticket,
    queue_modes_reject_and_passthrough,
    live_reads_many_tickets_and_records_presence,
    settings_round_trip,
    totals_revocations_and_delete,
    join_many_equals_joins_in_order,
    prequeue_lottery_at_the_start_then_first_come,
    set_state_changes_only_the_state,
);

async fn set_state_changes_only_the_state<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("state-only");
    let cfg = EventSettings {
        state: EventState::Paused,
        fail_open: true,
        ..settings(2)
    };
    s.configure(&e, &cfg).await.expect("configure");
    futures_join(&s, &e, 3).await;
    assert_eq!(s.event(&e).await.expect("event").admitted, 0, "paused");
    // Someone else raises the capacity meanwhile; resuming keeps it.
    s.configure(
        &e,
        &EventSettings {
            capacity: 3,
            ..cfg.clone()
        },
    )
    .await
    .expect("raise");
    assert_eq!(
        s.set_state(&e, EventState::Open).await.expect("resume"),
        3,
        "resuming admits"
    );
    let info = s.event(&e).await.expect("event");
    assert_eq!(
        info.settings,
        EventSettings {
            capacity: 3,
            state: EventState::Open,
            ..cfg.clone()
        }
    );
    assert_eq!(s.set_state(&e, EventState::Closed).await.expect("close"), 0);
    assert!(matches!(
        s.join(&e, None).await,
        Err(AdmissionError::EventClosed(_))
    ));
    assert!(matches!(
        s.set_state(&ev("nope"), EventState::Open).await,
        Err(AdmissionError::UnknownEvent(_))
    ));
}

async fn prequeue_lottery_at_the_start_then_first_come<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("lottery");
    let start = T0 + 10_000;
    assert!(
        matches!(
            s.configure(
                &e,
                &EventSettings {
                    queue_mode: QueueMode::Prequeue,
                    ..settings(3)
                }
            )
            .await,
            Err(AdmissionError::InvalidInput(_))
        ),
        "prequeue without a start is refused"
    );
    let cfg = EventSettings {
        queue_mode: QueueMode::Prequeue,
        starts_at_ms: Some(start),
        ..settings(3)
    };
    s.configure(&e, &cfg).await.expect("configure");
    assert_eq!(s.event(&e).await.expect("event").settings, cfg);
    // Early arrivals: pre-queued, no number, nobody admitted even though there is capacity.
    let user = UserId::new("early-bird").expect("user");
    let mut early = Vec::new();
    for i in 0..40 {
        let u = (i == 0).then(|| user.clone());
        let j = s.join(&e, u.as_ref()).await.expect("join");
        assert_eq!(j.ticket.state, TicketState::PreQueued);
        assert_eq!((j.ticket.seq, j.ticket.ahead), (0, None));
        early.push(j.ticket.id);
    }
    let again = s.join(&e, Some(&user)).await.expect("same user");
    assert!(!again.created && again.ticket.id == early[0]);
    let batch = s.join_many(&e, &[None, None]).await.expect("join_many");
    for j in &batch {
        let j = j.as_ref().expect("joins");
        assert_eq!(j.ticket.state, TicketState::PreQueued);
        early.push(j.ticket.id.clone());
    }
    s.leave(&e, &early[5]).await.expect("leave the pre-queue");
    let info = s.event(&e).await.expect("event");
    assert_eq!(
        (info.pre_queued, info.waiting, info.admitted, info.joined),
        (41, 0, 0, 0)
    );
    assert!(info.active, "a pre-queue keeps the event active");
    assert_eq!(
        s.tick(&e).await.expect("tick").admitted,
        0,
        "nothing before the start"
    );
    let shard = dispatcher_admission::shard_of(&e, s.shard_count());
    assert!(
        s.due_events(shard, start, 0, 10)
            .await
            .expect("due")
            .contains(&e),
        "the start is a deadline"
    );
    // The start: the pre-queue is placed in a random order; 3 admitted at once.
    c.advance(10_000);
    let t = s.tick(&e).await.expect("tick at the start");
    assert_eq!(t.admitted, 3);
    let mut seq_of = Vec::new();
    for (i, id) in early.iter().enumerate() {
        let t = s.ticket(&e, id).await.expect("ticket");
        if i == 5 {
            assert_eq!(t.state, TicketState::Left);
            continue;
        }
        assert!(matches!(
            t.state,
            TicketState::Waiting | TicketState::Admitted
        ));
        seq_of.push(t.seq);
    }
    let mut sorted = seq_of.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=41).collect::<Vec<u64>>(),
        "every early arrival got one number"
    );
    assert_ne!(
        seq_of, sorted,
        "the order is shuffled, not the join order (1 in 41! to fail by chance)"
    );
    // After the start: first come, first served, behind every early arrival.
    let late = s.join(&e, None).await.expect("late join");
    assert_eq!(late.ticket.state, TicketState::Waiting);
    assert_eq!(late.ticket.seq, 42);
    assert_eq!(late.ticket.ahead, Some(38));
    let info = s.event(&e).await.expect("event");
    assert_eq!((info.pre_queued, info.waiting, info.admitted), (0, 39, 3));
}

async fn join_many_equals_joins_in_order<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("batch");
    s.configure(&e, &settings(2)).await.expect("configure");
    let u = |n: u32| Some(UserId::new(format!("u{n}")).expect("user"));
    let before = s.join(&e, u(1).as_ref()).await.expect("join").ticket;
    let out = s
        .join_many(&e, &[None, u(1), u(2), u(2), None, None])
        .await
        .expect("join_many");
    assert_eq!(out.len(), 6);
    let t: Vec<_> = out.into_iter().map(|o| o.expect("each joins")).collect();
    assert!(t[0].created && t[2].created && t[4].created && t[5].created);
    assert!(
        !t[1].created && t[1].ticket.id == before.id,
        "u1 keeps its live ticket"
    );
    assert!(
        !t[3].created && t[3].ticket.id == t[2].ticket.id,
        "u2 twice in one batch: one ticket"
    );
    let seqs: Vec<u64> = [0, 2, 4, 5].iter().map(|i| t[*i].ticket.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5], "sequence numbers in request order");
    assert_eq!(
        t[0].ticket.state,
        TicketState::Admitted,
        "capacity 2: u1 and the first new one"
    );
    assert_eq!(t[2].ticket.state, TicketState::Waiting);
    assert_eq!(t[2].ticket.ahead, Some(0));
    assert_eq!(t[4].ticket.ahead, Some(1));
    assert_eq!(t[5].ticket.ahead, Some(2));
    for o in &t {
        let read = s.ticket(&e, &o.ticket.id).await.expect("read");
        assert_eq!(read.state, o.ticket.state);
        assert_eq!(
            read.ahead, o.ticket.ahead,
            "the batch reports the positions a read sees"
        );
    }
    let info = s.event(&e).await.expect("event");
    assert_eq!((info.joined, info.waiting, info.admitted), (5, 3, 2));
    assert!(matches!(
        s.join_many(&e, &[]).await,
        Err(AdmissionError::InvalidInput(_))
    ));
    let too_many = vec![None; dispatcher_admission::MAX_JOIN_BATCH + 1];
    assert!(matches!(
        s.join_many(&e, &too_many).await,
        Err(AdmissionError::InvalidInput(_))
    ));
    assert!(matches!(
        s.join_many(&ev("nope"), &[None]).await,
        Err(AdmissionError::UnknownEvent(_))
    ));
    // Reject mode refuses the new ones, still answers the live ones.
    let reject = EventSettings {
        queue_mode: QueueMode::Reject,
        ..settings(2)
    };
    s.configure(&e, &reject).await.expect("reject");
    let out = s
        .join_many(&e, &[u(1), None, u(9)])
        .await
        .expect("join_many");
    assert!(out[0].as_ref().is_ok_and(|j| j.ticket.id == before.id));
    assert!(matches!(out[1], Err(AdmissionError::Rejected(_))));
    assert!(matches!(out[2], Err(AdmissionError::Rejected(_))));
    assert_eq!(
        s.event(&e).await.expect("event").joined,
        5,
        "refused joins take no number"
    );
}

async fn totals_revocations_and_delete<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("totals");
    let cfg = EventSettings {
        session_ttl_ms: 10_000,
        abandon_timeout_ms: 60_000,
        ..settings(2)
    };
    s.configure(&e, &cfg).await.expect("configure");
    let ts = futures_join(&s, &e, 6).await;
    s.revoke(&e, &ts[0]).await.expect("revoke admitted");
    s.revoke(&e, &ts[5]).await.expect("revoke waiting");
    s.complete(&e, &ts[1]).await.expect("complete");
    s.leave(&e, &ts[4]).await.expect("leave");
    let bulk = s
        .release_many(&e, &ts[2..4], Release::Revoke)
        .await
        .expect("bulk revoke");
    assert_eq!(bulk.changed, 2);
    let info = s.event(&e).await.expect("event");
    assert_eq!(info.totals.admitted, 4, "0, 1, then 2 and 3 got in");
    assert_eq!(info.totals.completed, 1);
    assert_eq!(info.totals.left, 1);
    assert_eq!(info.totals.revoked, 4);
    // Only tickets revoked while admitted are listed (their tokens exist), soonest expiry first.
    let rv = s.revocations(&e).await.expect("revocations");
    let listed: Vec<&str> = rv.iter().map(|r| r.ticket.as_str()).collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.contains(&ts[0].as_str()));
    assert!(listed.contains(&ts[2].as_str()) && listed.contains(&ts[3].as_str()));
    assert!(
        !listed.contains(&ts[5].as_str()),
        "a waiting ticket had no token"
    );
    assert!(
        rv.windows(2)
            .all(|w| w[0].expires_at_ms <= w[1].expires_at_ms)
    );
    // Expiry: a session that ends counts, and revoked tokens leave the list once expired.
    let more = futures_join(&s, &e, 1).await;
    c.advance(10_001);
    let t = s.tick(&e).await.expect("tick");
    assert_eq!(t.expired, 1);
    assert_eq!(s.event(&e).await.expect("event").totals.expired, 1);
    assert!(
        s.revocations(&e).await.expect("revocations").is_empty(),
        "expired tokens need no listing"
    );
    // Delete: refused with live tickets unless forced, then the event is gone everywhere.
    let other = futures_join(&s, &e, 1).await;
    assert_eq!(
        s.ticket(&e, &other[0]).await.expect("ticket").state,
        TicketState::Admitted
    );
    let before = s.event(&e).await.expect("event");
    assert!(matches!(
        s.delete_event(&e, false).await,
        Err(AdmissionError::Conflict(_))
    ));
    assert_eq!(
        s.event(&e).await.expect("still there"),
        before,
        "a refused delete changes nothing"
    );
    let d = s.delete_event(&e, true).await.expect("forced delete");
    assert_eq!(d.tickets, 8);
    assert!(matches!(
        s.event(&e).await,
        Err(AdmissionError::UnknownEvent(_))
    ));
    assert!(matches!(
        s.ticket(&e, &more[0]).await,
        Err(AdmissionError::UnknownEvent(_))
    ));
    let shard = dispatcher_admission::shard_of(&e, s.shard_count());
    assert!(!s.events(shard).await.expect("events").contains(&e));
    assert!(!s.active_events(shard).await.expect("active").contains(&e));
    assert!(matches!(
        s.delete_event(&e, true).await,
        Err(AdmissionError::UnknownEvent(_))
    ));
    // Re-created from scratch.
    s.configure(&e, &cfg).await.expect("re-create");
    let info = s.event(&e).await.expect("event");
    assert_eq!((info.joined, info.totals.admitted), (0, 0));
    // An empty event deletes without force.
    assert_eq!(s.delete_event(&e, false).await.expect("delete").tickets, 0);
}

async fn queue_modes_reject_and_passthrough<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("modes");
    let limited = EventSettings {
        rate_per_minute: Some(60),
        ..settings(3)
    };
    s.configure(&e, &limited).await.expect("configure");
    let user = UserId::new("u-1").expect("user");
    let first = s.join(&e, Some(&user)).await.expect("join");
    assert_eq!(
        first.ticket.state,
        TicketState::Admitted,
        "the bucket starts with one token"
    );
    let second = s.join(&e, None).await.expect("join");
    assert_eq!(
        second.ticket.state,
        TicketState::Waiting,
        "the rate holds the second"
    );
    // Passthrough: admitted at once while under capacity, without the rate.
    let pass = EventSettings {
        queue_mode: QueueMode::Passthrough,
        ..limited.clone()
    };
    let r = s.configure(&e, &pass).await.expect("passthrough");
    assert_eq!(
        r.admitted, 1,
        "the waiter goes through when the rate no longer applies"
    );
    let third = s.join(&e, None).await.expect("join");
    assert_eq!(third.ticket.state, TicketState::Admitted);
    let fourth = s.join(&e, None).await.expect("join");
    assert_eq!(
        fourth.ticket.state,
        TicketState::Waiting,
        "capacity still holds"
    );
    // Reject: no new joins, existing tickets carry on, a live ticket of the same user is returned.
    let reject = EventSettings {
        queue_mode: QueueMode::Reject,
        ..limited.clone()
    };
    s.configure(&e, &reject).await.expect("reject");
    let before = s.event(&e).await.expect("event");
    assert!(matches!(
        s.join(&e, None).await,
        Err(AdmissionError::Rejected(_))
    ));
    let again = s.join(&e, Some(&user)).await.expect("same user");
    assert!(!again.created);
    assert_eq!(again.ticket.id, first.ticket.id);
    let after = s.event(&e).await.expect("event");
    assert_eq!(
        before.joined, after.joined,
        "a refused join takes no number"
    );
    c.advance(1_000); // one token of the admission rate, which applies again
    let r = s.complete(&e, &first.ticket.id).await.expect("complete");
    assert_eq!(
        r.admitted_next, 1,
        "a rejecting event still drains its queue"
    );
}

async fn live_reads_many_tickets_and_records_presence<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("live");
    let quick = EventSettings {
        abandon_timeout_ms: 5_000,
        ..settings(1)
    };
    s.configure(&e, &quick).await.expect("configure");
    let ts = futures_join(&s, &e, 4).await;
    let unknown = TicketId::parse(&"ab".repeat(16)).expect("hex");
    let mut ask = ts.clone();
    ask.push(unknown);
    let v = s.live(&e, &ask).await.expect("live");
    assert_eq!(v.len(), 5);
    assert_eq!(v[0].as_ref().map(|t| t.state), Some(TicketState::Admitted));
    for (i, t) in v[1..4].iter().enumerate() {
        let t = t.as_ref().expect("known");
        assert_eq!(t.state, TicketState::Waiting);
        assert_eq!(
            t.ahead,
            Some(i as u64),
            "position is the exact number ahead"
        );
    }
    assert!(v[4].is_none(), "an unknown ticket reads as None");
    // Presence: tickets 1 and 2 are kept alive by the live pass, ticket 3 is not.
    c.advance(3_000);
    s.live(&e, &ts[1..3]).await.expect("live");
    c.advance(3_000);
    let t = s.tick(&e).await.expect("tick");
    assert_eq!(
        t.abandoned, 1,
        "only the waiter without presence is dropped"
    );
    let v = s.live(&e, &ts).await.expect("live");
    assert_eq!(v[3].as_ref().map(|t| t.state), Some(TicketState::Abandoned));
    assert_eq!(v[2].as_ref().and_then(|t| t.ahead), Some(1));
    let too_many: Vec<TicketId> = (0..=dispatcher_admission::MAX_LIVE_BATCH)
        .map(|i| TicketId::parse(&format!("{i:032x}")).expect("hex"))
        .collect();
    assert!(matches!(
        s.live(&e, &too_many).await,
        Err(AdmissionError::InvalidInput(_))
    ));
    assert!(matches!(
        s.live(&ev("nope"), &ts).await,
        Err(AdmissionError::UnknownEvent(_))
    ));
    // The entry stream's newest id is where a tail of new admissions starts.
    let shard = dispatcher_admission::shard_of(&e, s.shard_count());
    let last = s.last_entry_id(shard).await.expect("last id");
    assert!(
        s.entry_records(shard, &last, 10)
            .await
            .expect("records")
            .is_empty()
    );
    s.complete(&e, &ts[0]).await.expect("complete");
    let new = s.entry_records(shard, &last, 10).await.expect("records");
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].ticket, ts[1].as_str());
}

async fn settings_round_trip<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("roundtrip");
    let cfg = EventSettings {
        rate_per_minute: Some(120),
        queue_mode: QueueMode::Passthrough,
        fail_open: true,
        state: EventState::Paused,
        ..settings(7)
    };
    s.configure(&e, &cfg).await.expect("configure");
    assert_eq!(s.event(&e).await.expect("event").settings, cfg);
    let back = EventSettings {
        queue_mode: QueueMode::Fifo,
        fail_open: false,
        ..cfg
    };
    s.configure(&e, &back).await.expect("configure");
    assert_eq!(s.event(&e).await.expect("event").settings, back);
}

async fn join_orders_by_sequence_and_admits_within_capacity<S: AdmissionStore>(
    s: Arc<S>,
    _c: Clock,
) {
    let e = ev("concert");
    let cfg = s.configure(&e, &settings(2)).await.expect("configure");
    assert!(cfg.created);
    let mut tickets = Vec::new();
    for i in 0..5 {
        let j = s.join(&e, None).await.expect("join");
        assert!(j.created);
        assert_eq!(
            j.ticket.seq,
            i + 1,
            "sequence numbers are assigned in join order"
        );
        tickets.push(j.ticket);
    }
    assert_eq!(tickets[0].state, TicketState::Admitted);
    assert_eq!(tickets[1].state, TicketState::Admitted);
    for (i, t) in tickets[2..].iter().enumerate() {
        assert_eq!(t.state, TicketState::Waiting);
        assert_eq!(
            t.ahead,
            Some(i as u64),
            "people ahead = waiting tickets with a lower sequence"
        );
    }
    let ids: HashSet<&str> = tickets.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), 5, "ticket ids are distinct");
    let info = s.event(&e).await.expect("event");
    assert_eq!((info.joined, info.waiting, info.admitted), (5, 3, 2));
    assert_eq!(
        s.promote(&e).await.expect("promote"),
        0,
        "full: nothing to admit"
    );
    let t4 = s.ticket(&e, &tickets[4].id).await.expect("read");
    assert_eq!(t4.ahead, Some(2));
}

async fn join_is_idempotent_per_user_while_live<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("drop-1");
    s.configure(&e, &settings(1)).await.expect("configure");
    let alice = UserId::new("alice@example.com").expect("user");
    let a1 = s.join(&e, Some(&alice)).await.expect("join");
    let a2 = s.join(&e, Some(&alice)).await.expect("join again");
    assert!(a1.created);
    assert!(!a2.created);
    assert_eq!(a1.ticket.id, a2.ticket.id);
    assert_eq!(a2.ticket.seq, 1);
    assert_eq!(
        s.event(&e).await.expect("event").joined,
        1,
        "no second sequence number taken"
    );
    assert_eq!(a1.ticket.user.as_ref(), Some(&alice));
    // After the ticket ends, the same user joins anew.
    s.complete(&e, &a1.ticket.id).await.expect("complete");
    let a3 = s.join(&e, Some(&alice)).await.expect("rejoin");
    assert!(a3.created);
    assert_ne!(a3.ticket.id, a1.ticket.id);
    assert_eq!(a3.ticket.seq, 2);
}

async fn complete_admits_next_in_the_same_step<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("shop");
    s.configure(&e, &settings(1)).await.expect("configure");
    let a = s.join(&e, None).await.expect("join").ticket;
    let b = s.join(&e, None).await.expect("join").ticket;
    assert_eq!(a.state, TicketState::Admitted);
    assert_eq!(b.state, TicketState::Waiting);
    let r = s.complete(&e, &a.id).await.expect("complete");
    assert!(r.changed);
    assert_eq!(r.admitted_next, 1);
    assert_eq!(r.ticket.state, TicketState::Completed);
    assert_eq!(
        s.ticket(&e, &b.id).await.expect("read").state,
        TicketState::Admitted
    );
    // Completing twice changes nothing and admits nobody.
    let again = s.complete(&e, &a.id).await.expect("complete again");
    assert!(!again.changed);
    assert_eq!(again.admitted_next, 0);
    // A waiting ticket cannot complete.
    let c = s.join(&e, None).await.expect("join").ticket;
    assert!(matches!(
        s.complete(&e, &c.id).await,
        Err(AdmissionError::Conflict(_))
    ));
    assert_eq!(
        s.ticket(&e, &c.id).await.expect("read").state,
        TicketState::Waiting
    );
}

async fn expiry_frees_each_slot_exactly_once<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("ttl");
    s.configure(&e, &settings(2)).await.expect("configure");
    let ts: Vec<_> = futures_join(&s, &e, 4).await;
    c.advance(9_999);
    let t = s.tick(&e).await.expect("tick");
    assert_eq!(t.expired, 0, "not yet at the TTL instant");
    c.advance(1);
    let t = s.tick(&e).await.expect("tick");
    assert_eq!((t.expired, t.admitted), (2, 2));
    let t = s.tick(&e).await.expect("tick again");
    assert_eq!(
        (t.expired, t.admitted),
        (0, 0),
        "each slot freed exactly once"
    );
    for id in &ts[..2] {
        let r = s.ticket(&e, id).await.expect("read");
        assert_eq!(r.state, TicketState::Expired);
        assert_eq!(r.ended_at_ms, Some(T0 + 10_000));
    }
    for id in &ts[2..] {
        let r = s.ticket(&e, id).await.expect("read");
        assert_eq!(r.state, TicketState::Admitted);
        assert_eq!(r.expires_at_ms, Some(T0 + 20_000));
    }
    // A completed ticket does not expire later.
    s.complete(&e, &ts[2]).await.expect("complete");
    c.advance(10_000);
    let t = s.tick(&e).await.expect("tick");
    assert_eq!(t.expired, 1);
    assert_eq!(
        s.ticket(&e, &ts[2]).await.expect("read").state,
        TicketState::Completed
    );
}

async fn futures_join<S: AdmissionStore>(s: &Arc<S>, e: &EventId, n: usize) -> Vec<TicketId> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(s.join(e, None).await.expect("join").ticket.id);
    }
    out
}

async fn abandon_drops_silent_waiters_only<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("abandon");
    let quick = EventSettings {
        abandon_timeout_ms: 5_000,
        ..settings(1)
    };
    s.configure(&e, &quick).await.expect("configure");
    let ts = futures_join(&s, &e, 3).await;
    c.advance(4_000);
    let hb = s.heartbeat(&e, &ts[2]).await.expect("heartbeat");
    assert_eq!(hb.state, TicketState::Waiting);
    c.advance(1_000);
    let t = s.tick(&e).await.expect("tick");
    assert_eq!(t.abandoned, 1, "only the silent waiter is dropped");
    assert_eq!(
        s.ticket(&e, &ts[0]).await.expect("read").state,
        TicketState::Admitted,
        "admitted tickets have no presence rule"
    );
    assert_eq!(
        s.ticket(&e, &ts[1]).await.expect("read").state,
        TicketState::Abandoned
    );
    let t2 = s.ticket(&e, &ts[2]).await.expect("read");
    assert_eq!((t2.state, t2.ahead), (TicketState::Waiting, Some(0)));
    // A plain read is not presence; a heartbeat is.
    c.advance(4_000);
    s.ticket(&e, &ts[2]).await.expect("read");
    c.advance(1_000);
    assert_eq!(s.tick(&e).await.expect("tick").abandoned, 1);
    assert_eq!(s.event(&e).await.expect("event").waiting, 0);
}

async fn lowering_capacity_evicts_nobody<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("cap");
    s.configure(&e, &settings(3)).await.expect("configure");
    let ts = futures_join(&s, &e, 5).await;
    let r = s.configure(&e, &settings(1)).await.expect("lower");
    assert!(!r.created);
    let info = s.event(&e).await.expect("event");
    assert_eq!(
        (info.admitted, info.waiting, info.settings.capacity),
        (3, 2, 1)
    );
    s.complete(&e, &ts[0]).await.expect("complete");
    assert_eq!(
        s.event(&e).await.expect("event").admitted,
        2,
        "still above capacity: nobody admitted"
    );
    s.complete(&e, &ts[1]).await.expect("complete");
    let r = s.complete(&e, &ts[2]).await.expect("complete");
    assert_eq!(
        r.admitted_next, 1,
        "below capacity again: admission resumes"
    );
    assert_eq!(
        s.ticket(&e, &ts[3]).await.expect("read").state,
        TicketState::Admitted
    );
    let raised = s.configure(&e, &settings(5)).await.expect("raise");
    assert_eq!(raised.admitted, 1, "raising capacity admits at once");
}

async fn pause_resume_and_close<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("pause");
    let paused = EventSettings {
        state: EventState::Paused,
        ..settings(2)
    };
    s.configure(&e, &paused).await.expect("configure");
    let ts = futures_join(&s, &e, 3).await;
    assert_eq!(s.event(&e).await.expect("event").admitted, 0);
    assert_eq!(s.promote(&e).await.expect("promote"), 0);
    let r = s.configure(&e, &settings(2)).await.expect("resume");
    assert_eq!(r.admitted, 2);
    let closed = EventSettings {
        state: EventState::Closed,
        ..settings(2)
    };
    s.configure(&e, &closed).await.expect("close");
    assert!(matches!(
        s.join(&e, None).await,
        Err(AdmissionError::EventClosed(_))
    ));
    assert_eq!(
        s.event(&e).await.expect("event").joined,
        3,
        "a refused join takes no number"
    );
    let r = s.complete(&e, &ts[0]).await.expect("complete");
    assert_eq!(r.admitted_next, 1, "a closed event still drains its queue");
}

async fn rate_limits_admissions<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("rate");
    let limited = EventSettings {
        rate_per_minute: Some(60),
        session_ttl_ms: 60_000,
        ..settings(100)
    };
    s.configure(&e, &limited).await.expect("configure");
    futures_join(&s, &e, 5).await;
    assert_eq!(
        s.event(&e).await.expect("event").admitted,
        1,
        "one token: one admission"
    );
    assert_eq!(s.promote(&e).await.expect("promote"), 0);
    c.advance(999);
    assert_eq!(s.promote(&e).await.expect("promote"), 0);
    c.advance(1);
    assert_eq!(s.promote(&e).await.expect("promote"), 1);
    c.advance(10_000);
    assert_eq!(
        s.tick(&e).await.expect("tick").admitted,
        1,
        "the bucket holds one second's worth"
    );
    assert_eq!(s.event(&e).await.expect("event").admitted, 3);
}

async fn registry_tracks_active_events_by_itself<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("registry");
    s.configure(&e, &settings(1)).await.expect("configure");
    let in_registry = |list: Vec<Vec<EventId>>| list.into_iter().flatten().any(|x| x == e);
    let mut lists = Vec::new();
    for sh in 0..s.shard_count() {
        lists.push(s.active_events(sh).await.expect("active"));
    }
    assert!(
        !in_registry(lists),
        "a configured event with no tickets is not active"
    );
    let a = s.join(&e, None).await.expect("join").ticket;
    let b = s.join(&e, None).await.expect("join").ticket;
    let mut lists = Vec::new();
    for sh in 0..s.shard_count() {
        lists.push(s.active_events(sh).await.expect("active"));
    }
    assert!(in_registry(lists));
    s.complete(&e, &a.id).await.expect("complete");
    s.leave(&e, &b.id).await.expect("leave");
    let mut lists = Vec::new();
    for sh in 0..s.shard_count() {
        lists.push(s.active_events(sh).await.expect("active"));
    }
    assert!(!in_registry(lists), "the last change removed it atomically");
    assert!(!s.event(&e).await.expect("event").active);
    let mut all = Vec::new();
    for sh in 0..s.shard_count() {
        all.extend(s.events(sh).await.expect("events"));
    }
    assert!(
        all.contains(&e),
        "the catalogue still lists the configured event"
    );
}

async fn bad_input_changes_nothing<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    for bad in [
        "",
        "a{b",
        "a}b",
        "a:b",
        "a b",
        "tab\tx",
        "nul\0x",
        "ctl\u{7}",
        "ü",
        &"x".repeat(65),
    ] {
        assert!(
            matches!(EventId::new(bad), Err(AdmissionError::InvalidInput(_))),
            "{bad:?} must be refused"
        );
    }
    for bad in ["", "a b", "x\ny", &"u".repeat(129)] {
        assert!(matches!(
            UserId::new(bad),
            Err(AdmissionError::InvalidInput(_))
        ));
    }
    for bad in ["", "zz", &"g".repeat(32), &"A".repeat(32), &"a".repeat(33)] {
        assert!(matches!(
            TicketId::parse(bad),
            Err(AdmissionError::InvalidInput(_))
        ));
    }
    let e = ev("bad");
    s.configure(&e, &settings(2)).await.expect("configure");
    let before = s.event(&e).await.expect("event");
    let broken = [
        EventSettings {
            capacity: 0,
            ..settings(2)
        },
        EventSettings {
            capacity: 10_000_001,
            ..settings(2)
        },
        EventSettings {
            session_ttl_ms: 0,
            ..settings(2)
        },
        EventSettings {
            session_ttl_ms: u64::MAX,
            ..settings(2)
        },
        EventSettings {
            abandon_timeout_ms: 1,
            ..settings(2)
        },
        EventSettings {
            rate_per_minute: Some(0),
            ..settings(2)
        },
        EventSettings {
            retention_ms: 0,
            ..settings(2)
        },
    ];
    for b in &broken {
        assert!(
            matches!(
                s.configure(&e, b).await,
                Err(AdmissionError::InvalidInput(_))
            ),
            "{b:?}"
        );
    }
    assert_eq!(
        s.event(&e).await.expect("event"),
        before,
        "refused settings changed nothing"
    );
    let unknown = ev("nope");
    assert!(matches!(
        s.join(&unknown, None).await,
        Err(AdmissionError::UnknownEvent(_))
    ));
    assert!(matches!(
        s.event(&unknown).await,
        Err(AdmissionError::UnknownEvent(_))
    ));
    assert!(matches!(
        s.configure(&unknown, &broken[0]).await,
        Err(AdmissionError::InvalidInput(_))
    ));
    assert!(
        matches!(
            s.event(&unknown).await,
            Err(AdmissionError::UnknownEvent(_))
        ),
        "no event created by bad settings"
    );
    // A ticket of another event is unknown here.
    let other = ev("other");
    s.configure(&other, &settings(1)).await.expect("configure");
    let t = s.join(&other, None).await.expect("join").ticket;
    assert!(matches!(
        s.ticket(&e, &t.id).await,
        Err(AdmissionError::UnknownTicket)
    ));
    assert!(matches!(
        s.complete(&e, &t.id).await,
        Err(AdmissionError::UnknownTicket)
    ));
    assert!(matches!(
        s.leave(&e, &t.id).await,
        Err(AdmissionError::UnknownTicket)
    ));
    assert_eq!(
        s.ticket(&other, &t.id).await.expect("read").state,
        TicketState::Admitted
    );
    let never = TicketId::generate();
    assert!(matches!(
        s.heartbeat(&e, &never).await,
        Err(AdmissionError::UnknownTicket)
    ));
    assert_eq!(s.event(&e).await.expect("event"), before);
}

async fn final_tickets_are_retained_then_purged<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("retain");
    let short = EventSettings {
        retention_ms: 60_000,
        ..settings(1)
    };
    s.configure(&e, &short).await.expect("configure");
    let u = UserId::new("bob").expect("user");
    let t = s.join(&e, Some(&u)).await.expect("join").ticket;
    s.leave(&e, &t.id).await.expect("leave");
    c.advance(59_999);
    s.tick(&e).await.expect("tick");
    assert_eq!(
        s.ticket(&e, &t.id).await.expect("still readable").state,
        TicketState::Left
    );
    c.advance(1);
    assert_eq!(s.tick(&e).await.expect("tick").purged, 1);
    assert!(matches!(
        s.ticket(&e, &t.id).await,
        Err(AdmissionError::UnknownTicket)
    ));
    assert_eq!(s.event(&e).await.expect("event").finished, 0);
    let again = s.join(&e, Some(&u)).await.expect("join");
    assert!(again.created);
}

async fn entry_stream_records_every_admission<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("stream");
    s.configure(&e, &settings(2)).await.expect("configure");
    let u = UserId::new("carol").expect("user");
    let first = s.join(&e, Some(&u)).await.expect("join").ticket;
    let ts = futures_join(&s, &e, 3).await;
    c.advance(10_000);
    s.tick(&e).await.expect("tick");
    let shard = dispatcher_admission::shard_of(&e, s.shard_count());
    let recs = s.entry_records(shard, "0", 100).await.expect("records");
    let mine: Vec<_> = recs.iter().filter(|r| r.event == "stream").collect();
    assert_eq!(mine.len(), 4, "one record per admission");
    let seqs: Vec<u64> = mine.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "admission order is join order");
    assert_eq!(mine[0].ticket, first.id.as_str());
    assert_eq!(mine[0].user, "carol");
    assert_eq!(mine[0].admitted_at_ms, T0);
    assert_eq!(mine[0].expires_at_ms, T0 + 10_000);
    assert_eq!(mine[2].ticket, ts[1].as_str());
    assert_eq!(mine[2].admitted_at_ms, T0 + 10_000);
    let after = s
        .entry_records(shard, &mine[1].entry_id, 100)
        .await
        .expect("records");
    assert_eq!(after.iter().filter(|r| r.event == "stream").count(), 2);
}

async fn leave_and_revoke_free_slots<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("leave");
    s.configure(&e, &settings(1)).await.expect("configure");
    let ts = futures_join(&s, &e, 4).await;
    let r = s.leave(&e, &ts[2]).await.expect("leave waiting");
    assert_eq!((r.ticket.state, r.admitted_next), (TicketState::Left, 0));
    assert_eq!(s.ticket(&e, &ts[3]).await.expect("read").ahead, Some(1));
    let r = s.revoke(&e, &ts[0]).await.expect("revoke admitted");
    assert_eq!((r.ticket.state, r.admitted_next), (TicketState::Revoked, 1));
    assert_eq!(
        s.ticket(&e, &ts[1]).await.expect("read").state,
        TicketState::Admitted
    );
    let r = s.leave(&e, &ts[1]).await.expect("leave admitted");
    assert_eq!(r.admitted_next, 1);
    assert!(
        matches!(s.revoke(&e, &ts[2]).await, Err(AdmissionError::Conflict(_))),
        "final states are final"
    );
    let info = s.event(&e).await.expect("event");
    assert_eq!((info.admitted, info.waiting, info.finished), (1, 0, 3));
}

async fn promoter_admits_at_the_ttl_instant<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let e = ev("promoter");
    s.configure(&e, &settings(1)).await.expect("configure");
    let ts = futures_join(&s, &e, 2).await;
    let p = Promoter::new(s.clone(), PromoterOptions::default());
    let t = p.due_round().await.expect("round");
    assert_eq!(t.admitted, 0);
    c.advance(10_000);
    let t = p.due_round().await.expect("round");
    assert_eq!((t.expired, t.admitted), (1, 1));
    assert_eq!(
        s.ticket(&e, &ts[1]).await.expect("read").state,
        TicketState::Admitted
    );
    assert_eq!(
        s.next_due().await.expect("due").map(|d| d >= T0 + 10_000),
        Some(true)
    );
}

async fn many_events_spread_over_shards<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let events: Vec<EventId> = (0..40).map(|i| ev(&format!("ev-{i}"))).collect();
    for e in &events {
        s.configure(e, &settings(1)).await.expect("configure");
        futures_join(&s, e, 3).await;
    }
    c.advance(10_000);
    let p = Promoter::new(s.clone(), PromoterOptions::default());
    let t = p.due_round().await.expect("round");
    assert_eq!(
        (t.expired, t.admitted),
        (40, 40),
        "every due event got its pass"
    );
    let t = p.sweep().await.expect("sweep");
    assert_eq!(t.admitted, 0);
    let mut active = 0;
    for sh in 0..s.shard_count() {
        active += s.active_events(sh).await.expect("active").len();
    }
    assert_eq!(active, 40);
}

async fn bulk_release_ends_each_ticket_once_and_refills<S: AdmissionStore>(s: Arc<S>, _c: Clock) {
    let e = ev("bulk");
    s.configure(&e, &settings(3)).await.expect("configure");
    let ts = futures_join(&s, &e, 6).await;
    let other = ev("bulk-other");
    s.configure(&other, &settings(1)).await.expect("configure");
    let foreign = s.join(&other, None).await.expect("join").ticket.id;
    let batch = vec![
        ts[0].clone(),
        ts[1].clone(),
        ts[0].clone(),
        ts[4].clone(),
        foreign.clone(),
    ];
    let r = s
        .release_many(&e, &batch, Release::Complete)
        .await
        .expect("bulk complete");
    assert_eq!(r.changed, 2);
    assert_eq!(
        r.admitted_next, 2,
        "two slots freed, two admitted in the same step"
    );
    assert_eq!(
        r.outcomes,
        vec![
            BulkOutcome::Released,
            BulkOutcome::Released,
            BulkOutcome::Already,
            BulkOutcome::Conflict(TicketState::Waiting),
            BulkOutcome::Unknown,
        ]
    );
    assert_eq!(
        s.ticket(&e, &ts[3]).await.expect("read").state,
        TicketState::Admitted
    );
    assert_eq!(
        s.ticket(&e, &ts[4]).await.expect("read").state,
        TicketState::Admitted
    );
    assert_eq!(s.ticket(&e, &ts[5]).await.expect("read").ahead, Some(0));
    let again = s
        .release_many(&e, &batch[..2], Release::Complete)
        .await
        .expect("again");
    assert_eq!((again.changed, again.admitted_next), (0, 0));
    let info = s.event(&e).await.expect("event");
    assert_eq!((info.admitted, info.waiting, info.finished), (3, 1, 2));
    assert!(matches!(
        s.release_many(&e, &[], Release::Leave).await,
        Err(AdmissionError::InvalidInput(_))
    ));
    let too_many: Vec<TicketId> = (0..1001).map(|_| TicketId::generate()).collect();
    assert!(matches!(
        s.release_many(&e, &too_many, Release::Leave).await,
        Err(AdmissionError::InvalidInput(_))
    ));
    assert_eq!(
        s.event(&e).await.expect("event"),
        info,
        "refused bulk calls changed nothing"
    );
    let left = s
        .release_many(&e, &[ts[5].clone(), ts[2].clone()], Release::Leave)
        .await
        .expect("bulk leave");
    assert_eq!((left.changed, left.admitted_next), (2, 0));
}

async fn a_release_after_the_session_ended_expires_the_ticket<S: AdmissionStore>(
    s: Arc<S>,
    c: Clock,
) {
    let e = ev("late");
    s.configure(&e, &settings(2)).await.expect("configure");
    let ts = futures_join(&s, &e, 4).await;
    c.advance(10_000);
    // No promoter pass yet: the sessions have ended but are still recorded as admitted.
    let r = s.complete(&e, &ts[0]).await;
    assert!(matches!(r, Err(AdmissionError::Conflict(_))), "{r:?}");
    let t0 = s.ticket(&e, &ts[0]).await.expect("read");
    assert_eq!(
        (t0.state, t0.ended_at_ms),
        (TicketState::Expired, Some(T0 + 10_000))
    );
    assert_eq!(
        s.ticket(&e, &ts[2]).await.expect("read").state,
        TicketState::Admitted,
        "the slot was refilled"
    );
    let b = s
        .release_many(&e, &[ts[1].clone(), ts[1].clone()], Release::Complete)
        .await
        .expect("bulk");
    assert_eq!(b.changed, 0);
    assert_eq!(b.admitted_next, 1);
    assert_eq!(
        b.outcomes,
        vec![BulkOutcome::Conflict(TicketState::Expired); 2]
    );
    let t = s.tick(&e).await.expect("tick");
    assert_eq!(t.expired, 0, "each slot freed exactly once");
    let info = s.event(&e).await.expect("event");
    assert_eq!((info.admitted, info.waiting, info.finished), (2, 0, 2));
}
