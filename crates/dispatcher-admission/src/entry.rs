//! The entry-stream record format: what one atomic step writes to its shard's entry stream, and the one
//! decoder every reader (the store's `entry_records`, the forwarder) uses to turn a stream entry back into
//! one [`EntryRecord`] per admission.
//!
//! # Layout
//!
//! Every step that admits writes exactly one stream entry (`promote` in lua/lib.lua), whatever it admitted:
//!
//! | field | one admission | several admissions |
//! | --- | --- | --- |
//! | `e` | event id | event id |
//! | `at` | admission time, ms | admission time, ms (shared by the step) |
//! | `exp` | session end, ms | session end, ms (shared by the step) |
//! | `t`, `s`, `u` | ticket, sequence number, user ("" = anonymous) | — |
//! | `n` | — | number of admissions |
//! | `a` | — | one line per admission, in admission order: `ticket seq user`, lines joined by `\n` |
//!
//! User ids hold no whitespace (see [`UserId`]) and ticket ids are hex, so a space and a newline separate
//! them unambiguously; an anonymous admission's line ends with the space after its sequence number.
//! Every admission of one entry shares the entry id, so a reader's cursor (the last entry id it saw) never
//! splits a step: readers take whole entries.

use crate::model::{EntryRecord, EventId, TicketId, UserId};

/// Why an admission (or a whole entry) could not be decoded: it is poison, never an error of the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Poison {
    /// The entry's event field as written ("" when missing), for the log line.
    pub event: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One field of a stream entry as read: `None` when its value is not text.
pub(crate) type Field = (String, Option<String>);

/// Decodes one stream entry into its admissions, in admission order; a malformed admission is poison on
/// its own, a malformed entry (event, times or count) is one poison for the whole entry.
pub(crate) fn decode(id: &str, fields: &[Field]) -> Vec<Result<EntryRecord, Poison>> {
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let event = get("e").cloned().flatten().unwrap_or_default();
    let poison = |reason: String| Poison {
        event: event.clone(),
        reason,
    };
    let field = |name: &str| -> Result<&str, String> {
        match get(name) {
            Some(Some(v)) => Ok(v.as_str()),
            Some(None) => Err(format!("field {name} is not text")),
            None => Err(format!("missing field {name}")),
        }
    };
    let number = |name: &str| -> Result<u64, String> {
        field(name)?
            .parse::<u64>()
            .map_err(|_| format!("field {name} is not a number"))
    };
    let head = (|| {
        EventId::new(field("e")?).map_err(|e| e.to_string())?;
        Ok::<_, String>((number("at")?, number("exp")?))
    })();
    let (admitted_at_ms, expires_at_ms) = match head {
        Ok(h) => h,
        Err(reason) => return vec![Err(poison(reason))],
    };
    let record = |ticket: &str, seq: u64, user: &str| EntryRecord {
        entry_id: id.to_owned(),
        event: event.clone(),
        ticket: ticket.to_owned(),
        user: user.to_owned(),
        seq,
        admitted_at_ms,
        expires_at_ms,
    };
    if get("a").is_none() {
        // One admission: t, s, u.
        let one = (|| {
            let ticket = field("t")?;
            let seq = number("s")?;
            let user = if get("u").is_some() { field("u")? } else { "" };
            check_admission(ticket, user)?;
            Ok::<_, String>(record(ticket, seq, user))
        })();
        return vec![one.map_err(poison)];
    }
    let lines = match (field("a"), number("n")) {
        (Ok(a), Ok(n)) => {
            let lines: Vec<&str> = a.split('\n').collect();
            if lines.len() as u64 != n {
                return vec![Err(poison(format!(
                    "field n says {n} admissions, field a holds {}",
                    lines.len()
                )))];
            }
            lines
        }
        (Err(reason), _) | (_, Err(reason)) => return vec![Err(poison(reason))],
    };
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let mut parts = line.splitn(3, ' ');
            let (Some(ticket), Some(seq), Some(user)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(poison(format!("admission {i} is not `ticket seq user`")));
            };
            let seq = seq
                .parse::<u64>()
                .map_err(|_| poison(format!("admission {i}: sequence number is not a number")))?;
            check_admission(ticket, user).map_err(|r| poison(format!("admission {i}: {r}")))?;
            Ok(record(ticket, seq, user))
        })
        .collect()
}

fn check_admission(ticket: &str, user: &str) -> Result<(), String> {
    TicketId::parse(ticket).map_err(|_| "the ticket is not a ticket id".to_owned())?;
    if !user.is_empty() {
        UserId::new(user).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef0123456789abcdef";
    const T2: &str = "fedcba9876543210fedcba9876543210";

    fn fields(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
            .collect()
    }

    fn ok(v: Vec<Result<EntryRecord, Poison>>) -> Vec<EntryRecord> {
        v.into_iter().map(|r| r.expect("decodes")).collect()
    }

    #[test]
    fn one_admission_decodes_from_its_own_fields() {
        let f = fields(&[
            ("e", "ev"),
            ("t", T1),
            ("s", "4"),
            ("u", ""),
            ("at", "10"),
            ("exp", "20"),
        ]);
        let r = ok(decode("1-0", &f));
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].seq, r[0].user.as_str(), r[0].entry_id.as_str()),
            (4, "", "1-0")
        );
        assert_eq!((r[0].admitted_at_ms, r[0].expires_at_ms), (10, 20));
    }

    #[test]
    fn a_step_of_several_admissions_decodes_in_order_sharing_the_entry_id() {
        let a = format!("{T1} 7 alice\n{T2} 9 ");
        let f = fields(&[
            ("e", "ev"),
            ("at", "10"),
            ("exp", "20"),
            ("n", "2"),
            ("a", &a),
        ]);
        let r = ok(decode("5-1", &f));
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].ticket.as_str(), r[0].seq, r[0].user.as_str()),
            (T1, 7, "alice")
        );
        assert_eq!(
            (r[1].ticket.as_str(), r[1].seq, r[1].user.as_str()),
            (T2, 9, "")
        );
        assert!(
            r.iter()
                .all(|x| x.entry_id == "5-1" && x.event == "ev" && x.expires_at_ms == 20)
        );
    }

    #[test]
    fn one_bad_admission_is_poison_alone() {
        let a = format!("{T1} 7 alice\nnot-a-ticket 8 bob\n{T2} x \n{T2} 9");
        let f = fields(&[
            ("e", "ev"),
            ("at", "1"),
            ("exp", "2"),
            ("n", "4"),
            ("a", &a),
        ]);
        let r = decode("1-0", &f);
        assert!(r[0].is_ok());
        assert!(r[1].is_err() && r[2].is_err() && r[3].is_err());
        assert_eq!(r[1].as_ref().expect_err("poison").event, "ev");
    }

    #[test]
    fn a_bad_head_or_count_poisons_the_whole_entry() {
        let a = format!("{T1} 7 alice\n{T2} 9 ");
        for bad in [
            vec![
                ("e", "ev"),
                ("at", "x"),
                ("exp", "2"),
                ("n", "2"),
                ("a", &a),
            ],
            vec![("at", "1"), ("exp", "2"), ("n", "2"), ("a", &a)],
            vec![
                ("e", "ev"),
                ("at", "1"),
                ("exp", "2"),
                ("n", "3"),
                ("a", &a),
            ],
            vec![("e", "ev"), ("at", "1"), ("exp", "2"), ("a", &a)],
            vec![
                ("e", "a b"),
                ("at", "1"),
                ("exp", "2"),
                ("n", "2"),
                ("a", &a),
            ],
        ] {
            let r = decode("1-0", &fields(&bad));
            assert_eq!(r.len(), 1, "{bad:?}");
            assert!(r[0].is_err(), "{bad:?}");
        }
        let mut f = fields(&[("e", "ev"), ("at", "1"), ("exp", "2"), ("s", "1")]);
        f.push(("t".into(), None));
        assert!(decode("1-0", &f)[0].is_err(), "a ticket that is not text");
    }
}
