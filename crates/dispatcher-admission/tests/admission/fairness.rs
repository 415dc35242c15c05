//! Fairness of the promoter across many events: one round gives every due event one bounded pass, so
//! 10,000 events make progress together and one hot event cannot hold the others back.

use std::sync::Arc;

use dispatcher_admission::{
    AdmissionStore, Clock, EventId, EventSettings, Promoter, PromoterOptions, TicketState,
};

use crate::common::{self, T0};

async fn ten_thousand_events_progress_in_one_round<S: AdmissionStore>(s: Arc<S>, c: Clock) {
    let cold = EventSettings {
        session_ttl_ms: 10_000,
        abandon_timeout_ms: 600_000,
        ..EventSettings::with_capacity(1)
    };
    let events: Vec<EventId> = (0..10_000)
        .map(|i| EventId::new(format!("fair-{i}")).expect("id"))
        .collect();
    let mut second = Vec::new();
    for e in &events {
        s.configure(e, &cold).await.expect("configure");
        s.join(e, None).await.expect("join");
        second.push(s.join(e, None).await.expect("join").ticket.id);
    }
    // One hot event with far more expiries due than one pass may handle.
    let hot = EventId::new("fair-hot").expect("id");
    let hot_cfg = EventSettings {
        capacity: 2_500,
        ..cold.clone()
    };
    s.configure(&hot, &hot_cfg).await.expect("configure");
    for _ in 0..3_000 {
        s.join(&hot, None).await.expect("join");
    }
    c.advance(10_000);
    let p = Promoter::new(s.clone(), PromoterOptions::default());
    let t = p.due_round().await.expect("round");
    // Every cold event expired its one admitted ticket and admitted the next; the hot event got one bounded
    // pass (tick_batch = 1,000 expiries, then admissions up to the per-call limit).
    assert_eq!(t.expired, 10_000 + 1_000);
    assert_eq!(
        t.admitted,
        10_000 + 500,
        "hot event: 1,000 slots freed, only 500 waiting"
    );
    for (e, id) in events.iter().zip(&second).step_by(997) {
        assert_eq!(
            s.ticket(e, id).await.expect("read").state,
            TicketState::Admitted,
            "{e} starved"
        );
    }
    let info = s.event(&hot).await.expect("hot");
    assert_eq!((info.admitted, info.waiting), (1_500 + 500, 0));
    // The hot event is still due (1,500 expiries left): bounded passes in the next rounds finish it.
    assert_eq!(p.due_round().await.expect("round").expired, 1_000);
    assert_eq!(p.due_round().await.expect("round").expired, 500);
    assert_eq!(p.due_round().await.expect("round").expired, 0);
    assert_eq!(
        s.next_due().await.expect("due").map(|d| d > T0 + 10_000),
        Some(true)
    );
}

#[tokio::test]
async fn memory_ten_thousand_events_progress_in_one_round() {
    let c = Clock::manual(T0);
    ten_thousand_events_progress_in_one_round(common::memory(c.clone()), c).await;
}

#[tokio::test]
async fn redis_ten_thousand_events_progress_in_one_round() {
    let c = Clock::manual(T0);
    ten_thousand_events_progress_in_one_round(common::redis(c.clone()).await, c).await;
}
