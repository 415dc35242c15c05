//! The in-process admission store: the same rules as the Redis scripts, on in-memory structures under one
//! lock, so `dispatcher demo` and embedded users need no Redis. Kept step-for-step equal to `lua/*.lua`;
//! the conformance suite and a differential property test hold the two together.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{AdmissionError, Result};
use crate::fenwick::Fenwick;
use crate::model::{
    BulkOutcome, BulkReleased, DeletedEvent, EntryRecord, EventId, EventInfo, EventSettings,
    EventState, EventTotals, Joined, MAX_REVOCATIONS, QueueMode, Released, Revocation, Tick,
    Ticket, TicketId, TicketState, UserId,
};
use crate::store::{
    AdmissionStore, Clock, Configured, Release, check_bulk, check_join_batch, check_live,
    join_each, lottery_number, system_now_ms,
};

/// Tuning of the in-process store (mirrors [`crate::RedisStoreOptions`]).
#[derive(Debug, Clone)]
pub struct MemoryStoreOptions {
    /// Approximate bound of the entry stream kept in memory (0 = unbounded).
    pub entry_stream_maxlen: u64,
    /// Most tickets one call admits.
    pub max_admit_per_call: u64,
    /// Most expiries/abandons/purges one tick handles per kind.
    pub tick_batch: u64,
    /// Where "now" comes from.
    pub clock: Clock,
}

impl Default for MemoryStoreOptions {
    fn default() -> Self {
        Self {
            entry_stream_maxlen: 1_000_000,
            max_admit_per_call: 1_000,
            tick_batch: 1_000,
            clock: Clock::Server,
        }
    }
}

#[derive(Debug, Clone)]
struct Rec {
    state: TicketState,
    seq: u64,
    joined: u64,
    admitted: u64,
    expires: u64,
    ended: u64,
    user: Option<UserId>,
}

#[derive(Debug)]
struct Event {
    settings: EventSettings,
    seq: u64,
    tok: Option<f64>,
    tts: u64,
    waiting: BTreeMap<u64, TicketId>,
    ranks: Fenwick,
    admitted: BTreeSet<(u64, TicketId)>,
    presence: BTreeSet<(u64, TicketId)>,
    last_seen: HashMap<TicketId, u64>,
    tickets: HashMap<TicketId, Rec>,
    users: HashMap<UserId, TicketId>,
    finals: BTreeSet<(u64, TicketId)>,
    totals: EventTotals,
    /// Tickets revoked while admitted, by token expiry (mirror of the `rv` zset).
    revoked: BTreeSet<(u64, TicketId)>,
    /// The pre-queue by lottery number (mirror of the `q` zset), and each ticket's number.
    prequeue: BTreeSet<(u64, TicketId)>,
    q_score: HashMap<TicketId, u64>,
    /// Joins after the start while the pre-queue is being placed (mirror of `qn`).
    qn: u64,
}

#[derive(Debug, Default)]
struct Inner {
    events: BTreeMap<EventId, Event>,
    active: BTreeSet<EventId>,
    due: BTreeSet<(u64, EventId)>,
    due_of: HashMap<EventId, u64>,
    entry: VecDeque<EntryRecord>,
    last_entry: (u64, u64),
}

/// The admission store in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    opts: MemoryStoreOptions,
    changed: Notify,
}

struct Ctx<'a> {
    now: u64,
    limit: u64,
    maxlen: u64,
    event_id: &'a EventId,
    /// Set by paths that changed nothing, so the indexes are left exactly as they were (as the scripts do).
    unchanged: bool,
    /// Set by the hot paths: settle cheaply (mirror of `settle_light`): (deadline created, admitted in
    /// this step).
    light: Option<(u64, u64)>,
    /// Whether the last promote reached the per-call limit (mirror of `P_LIMITED`).
    limited: bool,
    /// Leave the due index untouched (mirror of the early return in `settle_light`).
    keep_due: bool,
    /// The operation changed state and then failed (a late release expiring the ticket): settle anyway.
    settle_on_error: bool,
    entry: &'a mut VecDeque<EntryRecord>,
    last_entry: &'a mut (u64, u64),
}

impl Event {
    fn bucket_size(&self) -> f64 {
        f64::max(1.0, self.rate() as f64 / 60.0)
    }

    /// The admission rate in force (passthrough admits without it), mirror of `load_cfg`.
    fn rate(&self) -> u64 {
        if self.settings.queue_mode == QueueMode::Passthrough {
            return 0;
        }
        self.settings.rate_per_minute.unwrap_or(0)
    }

    fn refill(&mut self, now: u64) {
        if self.rate() == 0 {
            return;
        }
        let elapsed = now as f64 - self.tts as f64;
        if elapsed > 0.0 {
            let tok = self.tok.unwrap_or(0.0);
            self.tok = Some(f64::min(
                self.bucket_size(),
                tok + elapsed * self.rate() as f64 / 60000.0,
            ));
            self.tts = now;
        }
    }

    /// Mirror of `placement_time` in lib.lua.
    fn placement_time(&self, now: u64) -> u64 {
        match (self.settings.queue_mode, self.settings.starts_at_ms) {
            (QueueMode::Prequeue, Some(start)) if now < start => start,
            _ => now,
        }
    }

    /// Mirror of `prequeue_open` in lib.lua.
    fn prequeue_open(&self, now: u64) -> bool {
        self.settings.queue_mode == QueueMode::Prequeue
            && (now < self.settings.starts_at_ms.unwrap_or(0) || !self.prequeue.is_empty())
    }

    /// Mirror of `place_prequeued` in lib.lua.
    fn place_prequeued(&mut self, now: u64, limit: u64) -> u64 {
        if self.placement_time(now) > now {
            return 0;
        }
        let mut count = 0;
        while count < limit {
            let Some((_, id)) = self.prequeue.pop_first() else {
                break;
            };
            self.q_score.remove(&id);
            let seq = self.next_in_line(&id, now);
            if let Some(r) = self.tickets.get_mut(&id) {
                r.state = TicketState::Waiting;
                r.seq = seq;
            }
            count += 1;
        }
        count
    }

    /// Puts `id` at the end of the line: the next sequence number, presence now (mirror of the `HINCRBY
    /// seq`, `ZADD w`, `ZADD p` of the scripts). Returns the sequence number.
    fn next_in_line(&mut self, id: &TicketId, now: u64) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        self.waiting.insert(seq, id.clone());
        self.ranks.add(seq as usize, 1);
        if let Some(old) = self.last_seen.insert(id.clone(), now) {
            self.presence.remove(&(old, id.clone()));
        }
        self.presence.insert((now, id.clone()));
        seq
    }

    /// A new waiting ticket at the end of the line.
    fn line_up(&mut self, id: &TicketId, user: Option<&UserId>, now: u64) {
        let seq = self.next_in_line(id, now);
        self.tickets.insert(
            id.clone(),
            Rec {
                state: TicketState::Waiting,
                seq,
                joined: now,
                admitted: 0,
                expires: 0,
                ended: 0,
                user: user.cloned(),
            },
        );
        if let Some(u) = user {
            self.users.insert(u.clone(), id.clone());
        }
    }

    fn remove_prequeued(&mut self, id: &TicketId) {
        if let Some(score) = self.q_score.remove(id) {
            self.prequeue.remove(&(score, id.clone()));
        }
    }

    fn view(&self, id: &TicketId, r: &Rec) -> Ticket {
        Ticket {
            id: id.clone(),
            seq: r.seq,
            state: r.state,
            user: r.user.clone(),
            joined_at_ms: r.joined,
            admitted_at_ms: (r.admitted > 0).then_some(r.admitted),
            expires_at_ms: (r.expires > 0).then_some(r.expires),
            ended_at_ms: (r.ended > 0).then_some(r.ended),
            ahead: (r.state == TicketState::Waiting)
                .then(|| self.ranks.prefix(r.seq as usize - 1).max(0) as u64),
        }
    }

    fn remove_waiting(&mut self, id: &TicketId, seq: u64) {
        if self.waiting.remove(&seq).is_some() {
            self.ranks.add(seq as usize, -1);
        }
        if let Some(t) = self.last_seen.remove(id) {
            self.presence.remove(&(t, id.clone()));
        }
    }

    fn finish(&mut self, id: &TicketId, state: TicketState, now: u64) {
        self.totals.count_final(state, 1);
        if let Some(r) = self.tickets.get_mut(id) {
            if state == TicketState::Revoked && r.state == TicketState::Admitted {
                self.revoked.insert((r.expires, id.clone()));
            }
            r.state = state;
            r.ended = now;
        }
        self.finals.insert((now, id.clone()));
    }

    /// Mirror of `promote` in lib.lua.
    fn promote(&mut self, cx: &mut Ctx<'_>) -> u64 {
        cx.limited = false;
        if self.settings.state == EventState::Paused {
            return 0;
        }
        let free = self.settings.capacity as i64 - self.admitted.len() as i64;
        if free <= 0 {
            return 0;
        }
        let mut n = free.min(cx.limit as i64);
        if self.rate() > 0 {
            self.refill(cx.now);
            n = n.min((self.tok.unwrap_or(0.0) + 1e-9).floor() as i64);
        }
        if n <= 0 {
            return 0;
        }
        let ttl = self.settings.session_ttl_ms;
        let mut count = 0u64;
        // One entry for the whole step, as the Redis store writes it.
        let entry_id = next_entry_id(cx);
        for _ in 0..n {
            let Some((seq, id)) = self.waiting.pop_first() else {
                break;
            };
            self.ranks.add(seq as usize, -1);
            if let Some(t) = self.last_seen.remove(&id) {
                self.presence.remove(&(t, id.clone()));
            }
            let expires = cx.now + ttl;
            let user = match self.tickets.get_mut(&id) {
                Some(r) => {
                    r.state = TicketState::Admitted;
                    r.admitted = cx.now;
                    r.expires = expires;
                    r.user.clone()
                }
                None => None,
            };
            self.admitted.insert((expires, id.clone()));
            push_entry(cx, &entry_id, &id, user.as_ref(), seq, expires);
            count += 1;
        }
        if self.rate() > 0 {
            self.tok = Some(self.tok.unwrap_or(0.0) - count as f64);
        }
        self.totals.admitted += count;
        cx.limited = count > 0 && count == cx.limit;
        count
    }

    /// Mirror of `settle_light` in lib.lua: the earliest deadline this step may have created.
    fn light_due(&self, now: u64, extra: u64, admitted: u64, limited: bool) -> u64 {
        let mut due = extra;
        if admitted > 0 && now + self.settings.session_ttl_ms < due {
            due = now + self.settings.session_ttl_ms;
        }
        if limited {
            due = now;
        }
        if self.rate() > 0 && self.settings.state != EventState::Paused {
            let need = 1.0 - self.tok.unwrap_or(0.0);
            let t = if need > 0.0 {
                self.tts + (need * 60000.0 / self.rate() as f64).ceil() as u64
            } else {
                now
            };
            due = due.min(t);
        }
        due
    }

    /// Mirror of `settle` in lib.lua: the earliest instant something time-driven happens to the event.
    fn next_due(&self, now: u64) -> Option<u64> {
        let mut due: Option<u64> = None;
        let mut sooner = |t: u64| {
            if due.is_none_or(|d| t < d) {
                due = Some(t);
            }
        };
        if !self.prequeue.is_empty() {
            sooner(self.placement_time(now));
        }
        if let Some((t, _)) = self.admitted.first() {
            sooner(*t);
        }
        if !self.waiting.is_empty() {
            if let Some((t, _)) = self.presence.first() {
                sooner(t + self.settings.abandon_timeout_ms);
            }
            if self.settings.state != EventState::Paused
                && (self.admitted.len() as u64) < self.settings.capacity
            {
                if self.rate() > 0 {
                    let need = 1.0 - self.tok.unwrap_or(0.0);
                    if need <= 0.0 {
                        sooner(now);
                    } else {
                        sooner(self.tts + (need * 60000.0 / self.rate() as f64).ceil() as u64);
                    }
                } else {
                    sooner(now);
                }
            }
        }
        if let Some((t, _)) = self.finals.first() {
            sooner(t + self.settings.retention_ms);
        }
        due
    }

    fn info(&self, id: &EventId, active: bool) -> EventInfo {
        EventInfo {
            id: id.clone(),
            settings: self.settings.clone(),
            joined: self.seq,
            waiting: self.waiting.len() as u64,
            admitted: self.admitted.len() as u64,
            finished: self.finals.len() as u64,
            active,
            pre_queued: self.prequeue.len() as u64,
            totals: self.totals,
        }
    }
}

/// The id of the entry a step's admissions share: newer than every id before it, like Redis's `*`.
fn next_entry_id(cx: &mut Ctx<'_>) -> String {
    let (ms, n) = *cx.last_entry;
    let next = if cx.now > ms {
        (cx.now, 0)
    } else {
        (ms, n + 1)
    };
    *cx.last_entry = next;
    format!("{}-{}", next.0, next.1)
}

fn push_entry(
    cx: &mut Ctx<'_>,
    entry_id: &str,
    id: &TicketId,
    user: Option<&UserId>,
    seq: u64,
    expires: u64,
) {
    cx.entry.push_back(EntryRecord {
        entry_id: entry_id.to_owned(),
        event: cx.event_id.to_string(),
        ticket: id.to_string(),
        user: user.map(|u| u.to_string()).unwrap_or_default(),
        seq,
        admitted_at_ms: cx.now,
        expires_at_ms: expires,
    });
    if cx.maxlen > 0 && cx.entry.len() as u64 > cx.maxlen {
        cx.entry.pop_front();
    }
}

fn parse_entry_id(s: &str) -> (u64, u64) {
    let mut it = s.splitn(2, '-');
    let a = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let b = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    (a, b)
}

impl MemoryStore {
    /// A store with the given options.
    pub fn new(opts: MemoryStoreOptions) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            opts,
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.opts.clock.manual_now().unwrap_or_else(system_now_ms)
    }

    /// Runs `f` on an existing event with the operation context, then settles the registry and due index.
    fn with_event<T>(
        &self,
        event: &EventId,
        f: impl FnOnce(&mut Event, &mut Ctx<'_>) -> Result<T>,
    ) -> Result<T> {
        let now = self.now();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let ev = inner
            .events
            .get_mut(event)
            .ok_or_else(|| AdmissionError::UnknownEvent(event.to_string()))?;
        let mut cx = Ctx {
            now,
            limit: self.opts.max_admit_per_call,
            maxlen: self.opts.entry_stream_maxlen,
            event_id: event,
            unchanged: false,
            light: None,
            limited: false,
            keep_due: false,
            settle_on_error: false,
            entry: &mut inner.entry,
            last_entry: &mut inner.last_entry,
        };
        let out = f(ev, &mut cx);
        if out.is_err() && !cx.settle_on_error {
            return out;
        }
        if cx.unchanged {
            return out;
        }
        let active = !ev.waiting.is_empty() || !ev.admitted.is_empty() || !ev.prequeue.is_empty();
        if active {
            inner.active.insert(event.clone());
        } else {
            inner.active.remove(event);
        }
        if cx.keep_due {
            return out;
        }
        let due = match cx.light {
            Some((extra, admitted)) => {
                let d = ev.light_due(now, extra, admitted, cx.limited);
                Some(inner.due_of.get(event).map_or(d, |old| d.min(*old)))
            }
            None => ev.next_due(now),
        };
        let old_min = inner.due.first().map(|(t, _)| *t);
        if let Some(old) = inner.due_of.remove(event) {
            inner.due.remove(&(old, event.clone()));
        }
        if let Some(d) = due {
            inner.due.insert((d, event.clone()));
            inner.due_of.insert(event.clone(), d);
            if old_min.is_none_or(|m| d < m) {
                self.changed.notify_one();
            }
        }
        out
    }

    fn read_ticket(&self, event: &EventId, ticket: &TicketId, touch: bool) -> Result<Ticket> {
        let now = self.now();
        let mut inner = self.inner.lock();
        let ev = inner
            .events
            .get_mut(event)
            .ok_or_else(|| AdmissionError::UnknownEvent(event.to_string()))?;
        let r = ev
            .tickets
            .get(ticket)
            .cloned()
            .ok_or(AdmissionError::UnknownTicket)?;
        if touch && r.state == TicketState::Waiting {
            if let Some(old) = ev.last_seen.insert(ticket.clone(), now) {
                ev.presence.remove(&(old, ticket.clone()));
            }
            ev.presence.insert((now, ticket.clone()));
        }
        Ok(ev.view(ticket, &r))
    }
}

impl AdmissionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn shard_count(&self) -> u16 {
        1
    }

    async fn now_ms(&self) -> Result<u64> {
        Ok(self.now())
    }

    async fn configure(&self, event: &EventId, settings: &EventSettings) -> Result<Configured> {
        settings.validate()?;
        let now = self.now();
        let created = {
            let mut inner = self.inner.lock();
            if inner.events.contains_key(event) {
                false
            } else {
                inner.events.insert(
                    event.clone(),
                    Event {
                        settings: settings.clone(),
                        seq: 0,
                        tok: None,
                        tts: now,
                        waiting: BTreeMap::new(),
                        ranks: Fenwick::default(),
                        admitted: BTreeSet::new(),
                        presence: BTreeSet::new(),
                        last_seen: HashMap::new(),
                        tickets: HashMap::new(),
                        users: HashMap::new(),
                        finals: BTreeSet::new(),
                        totals: EventTotals::default(),
                        revoked: BTreeSet::new(),
                        prequeue: BTreeSet::new(),
                        q_score: HashMap::new(),
                        qn: 0,
                    },
                );
                true
            }
        };
        let admitted = self.with_event(event, |ev, cx| {
            ev.settings = settings.clone();
            if ev.rate() > 0 {
                if created || ev.tok.is_none() {
                    ev.tok = Some(ev.bucket_size());
                    ev.tts = cx.now;
                }
                ev.refill(cx.now);
                ev.tok = Some(f64::min(ev.tok.unwrap_or(0.0), ev.bucket_size()));
            }
            ev.place_prequeued(cx.now, cx.limit);
            Ok(ev.promote(cx))
        })?;
        Ok(Configured { created, admitted })
    }

    async fn set_state(&self, event: &EventId, state: EventState) -> Result<u64> {
        self.with_event(event, |ev, cx| {
            ev.settings.state = state;
            if ev.rate() > 0 {
                ev.refill(cx.now);
            }
            ev.place_prequeued(cx.now, cx.limit);
            Ok(ev.promote(cx))
        })
    }

    async fn event(&self, event: &EventId) -> Result<EventInfo> {
        let inner = self.inner.lock();
        let ev = inner
            .events
            .get(event)
            .ok_or_else(|| AdmissionError::UnknownEvent(event.to_string()))?;
        Ok(ev.info(event, inner.active.contains(event)))
    }

    async fn join(&self, event: &EventId, user: Option<&UserId>) -> Result<Joined> {
        let id = TicketId::generate();
        self.with_event(event, |ev, cx| {
            if ev.settings.state == EventState::Closed {
                return Err(AdmissionError::EventClosed(cx.event_id.to_string()));
            }
            if let Some(u) = user
                && let Some(existing) = ev.users.get(u)
                && let Some(r) = ev.tickets.get(existing)
                && !r.state.is_final()
            {
                cx.unchanged = true;
                return Ok(Joined {
                    ticket: ev.view(existing, r),
                    created: false,
                });
            }
            if ev.settings.queue_mode == QueueMode::Reject {
                return Err(AdmissionError::Rejected(cx.event_id.to_string()));
            }
            if ev.tickets.contains_key(&id) {
                return Err(AdmissionError::Conflict("ticket id collision".into()));
            }
            if ev.prequeue_open(cx.now) {
                let score = if cx.now < ev.settings.starts_at_ms.unwrap_or(0) {
                    lottery_number()
                } else {
                    ev.qn += 1;
                    (1u64 << 52) + ev.qn
                };
                let rec = Rec {
                    state: TicketState::PreQueued,
                    seq: 0,
                    joined: cx.now,
                    admitted: 0,
                    expires: 0,
                    ended: 0,
                    user: user.cloned(),
                };
                let view = ev.view(&id, &rec);
                ev.tickets.insert(id.clone(), rec);
                ev.prequeue.insert((score, id.clone()));
                ev.q_score.insert(id.clone(), score);
                if let Some(u) = user {
                    ev.users.insert(u.clone(), id.clone());
                }
                cx.light = Some((ev.placement_time(cx.now), 0));
                return Ok(Joined {
                    ticket: view,
                    created: true,
                });
            }
            ev.line_up(&id, user, cx.now);
            let n = ev.promote(cx);
            cx.light = Some((cx.now + ev.settings.abandon_timeout_ms, n));
            let r = ev
                .tickets
                .get(&id)
                .cloned()
                .ok_or(AdmissionError::UnknownTicket)?;
            Ok(Joined {
                ticket: ev.view(&id, &r),
                created: true,
            })
        })
    }

    /// Mirror of `join_many.lua`: the joins of the batch in order, one promotion at the end.
    async fn join_many(
        &self,
        event: &EventId,
        users: &[Option<UserId>],
    ) -> Result<Vec<Result<Joined>>> {
        check_join_batch(users)?;
        // Mirror of the PREQUEUE answer of join_many.lua: the pre-queue takes joins one by one.
        let one_by_one = {
            let now = self.now();
            let inner = self.inner.lock();
            let ev = inner
                .events
                .get(event)
                .ok_or_else(|| AdmissionError::UnknownEvent(event.to_string()))?;
            ev.settings.state != EventState::Closed && ev.prequeue_open(now)
        };
        if one_by_one {
            return Ok(join_each(self, event, users).await);
        }
        let ids: Vec<TicketId> = users.iter().map(|_| TicketId::generate()).collect();
        self.with_event(event, |ev, cx| {
            if ev.settings.state == EventState::Closed {
                return Err(AdmissionError::EventClosed(cx.event_id.to_string()));
            }
            enum Plan {
                Existing(TicketId),
                Fresh,
                SameAs(usize),
                Rejected,
            }
            let mut plans = Vec::with_capacity(users.len());
            let mut first_of: HashMap<&UserId, usize> = HashMap::new();
            for (i, u) in users.iter().enumerate() {
                if let Some(u) = u
                    && let Some(existing) = ev.users.get(u)
                    && ev
                        .tickets
                        .get(existing)
                        .is_some_and(|r| !r.state.is_final())
                {
                    plans.push(Plan::Existing(existing.clone()));
                    continue;
                }
                if let Some(u) = u
                    && let Some(&fi) = first_of.get(u)
                {
                    // A second join of the same user in this batch: the first one's new ticket.
                    plans.push(if matches!(plans[fi], Plan::Fresh) {
                        Plan::SameAs(fi)
                    } else {
                        Plan::Rejected
                    });
                    continue;
                }
                if let Some(u) = u {
                    first_of.insert(u, i);
                }
                plans.push(if ev.settings.queue_mode == QueueMode::Reject {
                    Plan::Rejected
                } else {
                    Plan::Fresh
                });
            }
            let fresh: Vec<usize> = plans
                .iter()
                .enumerate()
                .filter(|(_, p)| matches!(p, Plan::Fresh))
                .map(|(i, _)| i)
                .collect();
            if fresh.iter().any(|i| ev.tickets.contains_key(&ids[*i])) {
                return Err(AdmissionError::Conflict("ticket id collision".into()));
            }
            for &i in &fresh {
                ev.line_up(&ids[i], users[i].as_ref(), cx.now);
            }
            if fresh.is_empty() {
                cx.unchanged = true;
            } else {
                let n = ev.promote(cx);
                cx.light = Some((cx.now + ev.settings.abandon_timeout_ms, n));
            }
            let view_of = |ev: &Event, id: &TicketId| {
                ev.tickets
                    .get(id)
                    .map(|r| ev.view(id, r))
                    .ok_or(AdmissionError::UnknownTicket)
            };
            let mut out = Vec::with_capacity(users.len());
            for (i, p) in plans.iter().enumerate() {
                out.push(match p {
                    Plan::Existing(id) => view_of(ev, id).map(|ticket| Joined {
                        ticket,
                        created: false,
                    }),
                    Plan::Fresh => view_of(ev, &ids[i]).map(|ticket| Joined {
                        ticket,
                        created: true,
                    }),
                    Plan::SameAs(fi) => view_of(ev, &ids[*fi]).map(|ticket| Joined {
                        ticket,
                        created: false,
                    }),
                    Plan::Rejected => Err(AdmissionError::Rejected(cx.event_id.to_string())),
                });
            }
            Ok(out)
        })
    }

    async fn ticket(&self, event: &EventId, ticket: &TicketId) -> Result<Ticket> {
        self.read_ticket(event, ticket, false)
    }

    async fn heartbeat(&self, event: &EventId, ticket: &TicketId) -> Result<Ticket> {
        self.read_ticket(event, ticket, true)
    }

    async fn release(&self, event: &EventId, ticket: &TicketId, how: Release) -> Result<Released> {
        let target = how.target_state();
        self.with_event(event, |ev, cx| {
            let r = ev
                .tickets
                .get(ticket)
                .cloned()
                .ok_or(AdmissionError::UnknownTicket)?;
            if r.state == target {
                cx.unchanged = true;
                return Ok(Released {
                    ticket: ev.view(ticket, &r),
                    changed: false,
                    admitted_next: 0,
                });
            }
            if r.state == TicketState::Admitted && r.expires <= cx.now {
                // The session ended before this call: it expires now, as the timer would have done.
                ev.admitted.remove(&(r.expires, ticket.clone()));
                ev.finish(ticket, TicketState::Expired, cx.now);
                let n = ev.promote(cx);
                cx.light = Some((cx.now + ev.settings.retention_ms, n));
                cx.settle_on_error = true;
                return Err(AdmissionError::state_conflict(TicketState::Expired));
            }
            if r.state.is_final() || (how == Release::Complete && r.state != TicketState::Admitted)
            {
                return Err(AdmissionError::state_conflict(r.state));
            }
            if r.state == TicketState::Admitted {
                ev.admitted.remove(&(r.expires, ticket.clone()));
            } else {
                ev.remove_waiting(ticket, r.seq);
                ev.remove_prequeued(ticket);
            }
            ev.finish(ticket, target, cx.now);
            let n = ev.promote(cx);
            cx.light = Some((cx.now + ev.settings.retention_ms, n));
            let r = ev
                .tickets
                .get(ticket)
                .cloned()
                .ok_or(AdmissionError::UnknownTicket)?;
            Ok(Released {
                ticket: ev.view(ticket, &r),
                changed: true,
                admitted_next: n,
            })
        })
    }

    async fn release_many(
        &self,
        event: &EventId,
        tickets: &[TicketId],
        how: Release,
    ) -> Result<BulkReleased> {
        check_bulk(tickets)?;
        let target = how.target_state();
        self.with_event(event, |ev, cx| {
            let mut outcomes = Vec::with_capacity(tickets.len());
            let mut seen: HashMap<&TicketId, BulkOutcome> = HashMap::new();
            let mut changed = 0u64;
            let mut expired = 0u64;
            for id in tickets {
                let out = if let Some(prev) = seen.get(id) {
                    if *prev == BulkOutcome::Released {
                        BulkOutcome::Already
                    } else {
                        *prev
                    }
                } else {
                    match ev.tickets.get(id).cloned() {
                        None => BulkOutcome::Unknown,
                        Some(r) if r.state == target => BulkOutcome::Already,
                        Some(r) if r.state == TicketState::Admitted && r.expires <= cx.now => {
                            ev.admitted.remove(&(r.expires, id.clone()));
                            ev.finish(id, TicketState::Expired, cx.now);
                            expired += 1;
                            BulkOutcome::Conflict(TicketState::Expired)
                        }
                        Some(r)
                            if r.state.is_final()
                                || (how == Release::Complete
                                    && r.state != TicketState::Admitted) =>
                        {
                            BulkOutcome::Conflict(r.state)
                        }
                        Some(r) => {
                            if r.state == TicketState::Admitted {
                                ev.admitted.remove(&(r.expires, id.clone()));
                            } else {
                                ev.remove_waiting(id, r.seq);
                                ev.remove_prequeued(id);
                            }
                            ev.finish(id, target, cx.now);
                            changed += 1;
                            BulkOutcome::Released
                        }
                    }
                };
                seen.insert(id, out);
                outcomes.push(out);
            }
            if changed == 0 && expired == 0 {
                cx.unchanged = true;
                return Ok(BulkReleased {
                    changed: 0,
                    admitted_next: 0,
                    outcomes,
                });
            }
            let n = ev.promote(cx);
            cx.light = Some((cx.now + ev.settings.retention_ms, n));
            Ok(BulkReleased {
                changed,
                admitted_next: n,
                outcomes,
            })
        })
    }

    async fn promote(&self, event: &EventId) -> Result<u64> {
        let batch = self.opts.tick_batch;
        self.with_event(event, |ev, cx| {
            ev.place_prequeued(cx.now, batch);
            Ok(ev.promote(cx))
        })
    }

    async fn tick(&self, event: &EventId) -> Result<Tick> {
        let batch = self.opts.tick_batch as usize;
        let res = self.with_event(event, |ev, cx| {
            let now = cx.now;
            // `orphaned` stays 0: no ticket here can lose its record while in a line.
            let mut out = Tick::default();
            let expired: Vec<(u64, TicketId)> = ev
                .admitted
                .iter()
                .take_while(|(t, _)| *t <= now)
                .take(batch)
                .cloned()
                .collect();
            for (t, id) in &expired {
                ev.admitted.remove(&(*t, id.clone()));
                ev.finish(id, TicketState::Expired, now);
            }
            out.expired = expired.len() as u64;
            let cutoff = now as i64 - ev.settings.abandon_timeout_ms as i64;
            let stale: Vec<(u64, TicketId)> = ev
                .presence
                .iter()
                .take_while(|(t, _)| (*t as i64) <= cutoff)
                .take(batch)
                .cloned()
                .collect();
            for (_, id) in &stale {
                let seq = ev.tickets.get(id).map(|r| r.seq).unwrap_or(0);
                ev.remove_waiting(id, seq);
                ev.finish(id, TicketState::Abandoned, now);
            }
            out.abandoned = stale.len() as u64;
            let cutoff = now as i64 - ev.settings.retention_ms as i64;
            let old: Vec<(u64, TicketId)> = ev
                .finals
                .iter()
                .take_while(|(t, _)| (*t as i64) <= cutoff)
                .take(batch)
                .cloned()
                .collect();
            for (t, id) in &old {
                ev.finals.remove(&(*t, id.clone()));
                if let Some(r) = ev.tickets.remove(id)
                    && let Some(u) = r.user
                    && ev.users.get(&u) == Some(id)
                {
                    ev.users.remove(&u);
                }
            }
            out.purged = old.len() as u64;
            ev.revoked = ev.revoked.split_off(&(now + 1, TicketId::min_value()));
            ev.place_prequeued(now, batch as u64);
            out.admitted = ev.promote(cx);
            Ok(out)
        });
        if let Err(AdmissionError::UnknownEvent(_)) = &res {
            let mut inner = self.inner.lock();
            inner.active.remove(event);
            if let Some(old) = inner.due_of.remove(event) {
                inner.due.remove(&(old, event.clone()));
            }
        }
        res
    }

    async fn due_events(
        &self,
        _shard: u16,
        now_ms: u64,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<EventId>> {
        let inner = self.inner.lock();
        Ok(inner
            .due
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .skip(offset)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn next_due(&self) -> Result<Option<u64>> {
        Ok(self.inner.lock().due.first().map(|(t, _)| *t))
    }

    async fn active_events(&self, _shard: u16) -> Result<Vec<EventId>> {
        Ok(self.inner.lock().active.iter().cloned().collect())
    }

    async fn events(&self, _shard: u16) -> Result<Vec<EventId>> {
        Ok(self.inner.lock().events.keys().cloned().collect())
    }

    async fn entry_records(
        &self,
        _shard: u16,
        after: &str,
        count: usize,
    ) -> Result<Vec<EntryRecord>> {
        let after = parse_entry_id(after);
        let inner = self.inner.lock();
        let start = inner
            .entry
            .partition_point(|e| parse_entry_id(&e.entry_id) <= after);
        // At most `count` entries, each whole (a step's admissions share one id).
        let mut out: Vec<EntryRecord> = Vec::new();
        let mut entries = 0usize;
        for r in inner.entry.iter().skip(start) {
            if out.last().is_none_or(|l| l.entry_id != r.entry_id) {
                if entries == count {
                    break;
                }
                entries += 1;
            }
            out.push(r.clone());
        }
        Ok(out)
    }

    async fn live(&self, event: &EventId, tickets: &[TicketId]) -> Result<Vec<Option<Ticket>>> {
        check_live(tickets)?;
        let now = self.now();
        let mut inner = self.inner.lock();
        let ev = inner
            .events
            .get_mut(event)
            .ok_or_else(|| AdmissionError::UnknownEvent(event.to_string()))?;
        let mut out = Vec::with_capacity(tickets.len());
        for id in tickets {
            let Some(r) = ev.tickets.get(id).cloned() else {
                out.push(None);
                continue;
            };
            if r.state == TicketState::Waiting {
                if let Some(old) = ev.last_seen.insert(id.clone(), now) {
                    ev.presence.remove(&(old, id.clone()));
                }
                ev.presence.insert((now, id.clone()));
            }
            out.push(Some(ev.view(id, &r)));
        }
        Ok(out)
    }

    async fn revocations(&self, event: &EventId) -> Result<Vec<Revocation>> {
        let now = self.now();
        let inner = self.inner.lock();
        let ev = inner
            .events
            .get(event)
            .ok_or_else(|| AdmissionError::UnknownEvent(event.to_string()))?;
        Ok(ev
            .revoked
            .iter()
            .filter(|(exp, _)| *exp > now)
            .take(MAX_REVOCATIONS)
            .map(|(exp, id)| Revocation {
                ticket: id.to_string(),
                expires_at_ms: *exp,
            })
            .collect())
    }

    async fn delete_event(&self, event: &EventId, force: bool) -> Result<DeletedEvent> {
        let mut inner = self.inner.lock();
        let ev = inner
            .events
            .get(event)
            .ok_or_else(|| AdmissionError::UnknownEvent(event.to_string()))?;
        let live = ev.waiting.len() + ev.admitted.len() + ev.prequeue.len();
        if live > 0 && !force {
            return Err(AdmissionError::Conflict(format!(
                "event has {live} waiting or admitted tickets"
            )));
        }
        let tickets = ev.tickets.len() as u64;
        inner.events.remove(event);
        inner.active.remove(event);
        if let Some(d) = inner.due_of.remove(event) {
            inner.due.remove(&(d, event.clone()));
        }
        Ok(DeletedEvent {
            event: event.to_string(),
            tickets,
        })
    }

    async fn last_entry_id(&self, _shard: u16) -> Result<String> {
        Ok(self
            .inner
            .lock()
            .entry
            .back()
            .map(|e| e.entry_id.clone())
            .unwrap_or_else(|| "0-0".to_owned()))
    }

    async fn changed(&self) {
        self.changed.notified().await
    }
}
