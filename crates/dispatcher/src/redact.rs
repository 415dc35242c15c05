//! Hiding secrets in connection strings before they reach a log line, an error or `Debug` output.
//!
//! One function, [`redact`], for every form a Postgres or Redis connection string takes: the password of
//! a URL's user info (`postgres://u:pw@h/db`, `redis://:pw@h`), a `password=` query parameter
//! (`postgres://u@h/db?password=pw`) and libpq's key=value form (`host=h password=pw`, also quoted:
//! `password = 'a b'`). Several URLs in one string (a comma-separated seed list) are each redacted. It
//! errs on the side of hiding: anything that might be a password is replaced by `***`.

/// What replaces a secret.
const MASK: &str = "***";

/// `text` with every password in it replaced by `***`.
pub fn redact(text: &str) -> String {
    redact_params(&redact_userinfo(text))
}

/// Ends the part of a URL that can hold user info (what follows `scheme://` up to here).
fn ends_authority(c: char) -> bool {
    c.is_whitespace() || c == ','
}

/// `scheme://user:pw@host` → `scheme://user:***@host`, for every `://` in `text`. The user info runs to
/// the last `@` before the URL ends (a password may hold `@`, `/` or `?` unescaped), so a stray `@` later
/// in the URL only hides more than needed.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(ends_authority).unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        match url.rfind('@') {
            Some(at) => {
                let userinfo = &url[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Whether a parameter named `key` holds a secret.
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.ends_with("password") || k == "pass" || k == "pwd" || k == "passwd"
}

/// `password=pw` → `password=***`, as a URL query parameter (`?`/`&`/`;` before it, `&` or `#` after
/// the value) or a libpq key=value pair (blanks allowed around `=`, the value possibly single-quoted
/// with backslash escapes).
fn redact_params(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let at_key_start = i == 0
            || matches!(
                bytes[i - 1],
                b'?' | b'&' | b';' | b',' | b' ' | b'\t' | b'\n' | b'\r'
            );
        if !at_key_start || !bytes[i].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let key_end = i + bytes[i..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .unwrap_or(bytes.len() - i);
        let mut j = key_end;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' || !secret_key(&text[i..key_end]) {
            i = key_end.max(i + 1);
            continue;
        }
        j += 1;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        let value_start = j;
        let value_end = if j < bytes.len() && bytes[j] == b'\'' {
            let mut k = j + 1;
            while k < bytes.len() && bytes[k] != b'\'' {
                k += if bytes[k] == b'\\' { 2 } else { 1 };
            }
            (k + 1).min(bytes.len())
        } else {
            j + bytes[j..]
                .iter()
                .position(|b| b.is_ascii_whitespace() || matches!(b, b'&' | b'#' | b','))
                .unwrap_or(bytes.len() - j)
        };
        out.push_str(&text[copied..value_start]);
        out.push_str(MASK);
        copied = value_end;
        i = value_end.max(i + 1);
    }
    out.push_str(&text[copied.min(text.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    const PW: &str = "s3cr3t-Pa55";

    fn hidden(input: &str) -> String {
        let r = redact(input);
        assert!(
            !r.contains(PW),
            "{input:?} → {r:?} still holds the password"
        );
        assert!(
            !r.contains("3cr3t") && !r.contains("Pa55"),
            "{input:?} → {r:?} holds part of it"
        );
        r
    }

    #[test]
    fn url_user_info() {
        assert_eq!(
            hidden(&format!("redis://:{PW}@host:6379/0")),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            hidden(&format!("postgres://app:{PW}@db.internal:5432/shop")),
            "postgres://app:***@db.internal:5432/shop"
        );
        // A password holding `@`, `/` and `:` unescaped.
        hidden("postgres://app:s3cr3t@/:Pa55@db/shop");
        assert_eq!(
            redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379",
            "nothing to hide"
        );
        assert_eq!(
            redact("postgres://app@db/shop"),
            "postgres://app@db/shop",
            "a user name is not a secret"
        );
    }

    #[test]
    fn query_parameters() {
        assert_eq!(
            hidden(&format!("postgres://u@h/db?password={PW}")),
            "postgres://u@h/db?password=***"
        );
        assert_eq!(
            hidden(&format!(
                "postgres://u@h/db?sslmode=disable&PassWord={PW}&connect_timeout=3"
            )),
            "postgres://u@h/db?sslmode=disable&PassWord=***&connect_timeout=3"
        );
        assert_eq!(
            hidden(&format!("redis://h:6379/?password={PW}#x")),
            "redis://h:6379/?password=***#x"
        );
    }

    #[test]
    fn key_value_form() {
        assert_eq!(
            hidden(&format!(
                "host=db port=5432 user=app password={PW} dbname=shop"
            )),
            "host=db port=5432 user=app password=*** dbname=shop"
        );
        assert_eq!(
            hidden(&format!("password = {PW} host=db")),
            "password = *** host=db"
        );
        assert_eq!(
            hidden("host=db password='s3cr3t \\' Pa55' user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(
            hidden(&format!("sslpassword={PW}")),
            "sslpassword=***",
            "any key ending in password"
        );
        // An unterminated quote hides everything after it.
        hidden("password='s3cr3t Pa55");
        assert_eq!(redact("host=db user=app"), "host=db user=app");
        assert_eq!(
            redact("mypassword_hint=x"),
            "mypassword_hint=x",
            "only keys that end in password"
        );
    }

    #[test]
    fn every_url_of_a_list_and_inside_messages() {
        let r = hidden(&format!(
            "connecting to redis://:{PW}@a:7000,redis://u:{PW}@b:7001 failed"
        ));
        assert_eq!(
            r,
            "connecting to redis://:***@a:7000,redis://u:***@b:7001 failed"
        );
        assert_eq!(redact(""), "");
        assert_eq!(redact("password="), "password=***");
        assert_eq!(redact("://@"), "://@");
    }
}
