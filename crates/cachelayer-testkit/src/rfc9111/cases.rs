//! The conformance cases: what a shared cache must do (RFC 9111, and RFC 9110 and 9213 where
//! caching leans on them), one function per topic, each case citing its sections.
//!
//! A case states the behaviour the cache must have, not what an implementation does today:
//! cases must never be bent to pass. Dates that must be near the present are computed when
//! the cases are built, just before they run.

use std::time::{Duration, SystemTime};

use super::{Case, Expect, Step};
use crate::origin::Scripted;

/// A day.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// An hour.
const HOUR: Duration = Duration::from_secs(60 * 60);
/// The body every range case stores.
const DIGITS: &str = "0123456789";

/// Every case that needs no particular setting for responses that set cookies, for a cache
/// configured as the proxy is by default (targeted fields `Cachelayer-Cache-Control` then
/// `CDN-Cache-Control`, heuristic freshness on).
pub fn cases() -> Vec<Case> {
    [
        revalidation(),
        age(),
        targeted(),
        updating_headers(),
        large_freshness(),
        expires_formats(),
        no_cache(),
        heuristics(),
        ranges(),
        vary(),
        post(),
        must_understand(),
        conditional(),
    ]
    .concat()
}

/// `Set-Cookie` cases for a cache that refuses to store responses setting cookies (the
/// default), unless the response itself keeps the field from reuse.
pub fn set_cookie_refuse_cases() -> Vec<Case> {
    vec![
        Case::new("set-cookie-refused", "9111 §3, §7.3")
            .script([cookie_response()])
            .step(Step::get().expect(Expect::status(200).calls(1)))
            .step(Step::get().expect(Expect::status(200).calls(2))),
        field_kept_from_reuse(
            "set-cookie-no-cache-named",
            "max-age=60, no-cache=\"Set-Cookie\"",
        ),
        field_kept_from_reuse(
            "set-cookie-private-named",
            "private=\"Set-Cookie\", max-age=60",
        ),
    ]
}

/// A response stored whose `Set-Cookie` its `Cache-Control` keeps from reuse (RFC 9111
/// §5.2.2.4, §5.2.2.7): stored, and the hit has no cookie.
fn field_kept_from_reuse(name: &'static str, cache_control: &str) -> Case {
    Case::new(name, "9111 §5.2.2.4, §5.2.2.7")
        .script([Scripted::ok("shared part")
            .header("cache-control", cache_control)
            .header("set-cookie", "a=1")])
        .step(Step::get().expect(Expect::status(200).calls(1)))
        .step(Step::get().expect(Expect::hit(1).body("shared part").absent("set-cookie")))
}

/// `Set-Cookie` for a cache storing such responses without the field: the client that
/// caused the fetch gets its cookie, later clients do not.
pub fn set_cookie_strip_cases() -> Vec<Case> {
    vec![
        Case::new("set-cookie-strip", "9111 §3")
            .script([cookie_response()])
            .step(Step::get().expect(Expect::status(200).header("set-cookie", "a=1").calls(1)))
            .step(Step::get().expect(Expect::hit(1).body("cookie").absent("set-cookie"))),
    ]
}

/// `Set-Cookie` for a cache storing such responses whole, as RFC 9111 allows.
pub fn set_cookie_store_cases() -> Vec<Case> {
    vec![
        Case::new("set-cookie-store", "9111 §3, §7.3")
            .script([cookie_response()])
            .step(Step::get().expect(Expect::status(200).header("set-cookie", "a=1").calls(1)))
            .step(Step::get().expect(Expect::hit(1).body("cookie").header("set-cookie", "a=1"))),
    ]
}

/// A fresh response that sets a cookie.
fn cookie_response() -> Scripted {
    Scripted::ok("cookie")
        .header("cache-control", "max-age=60")
        .header("set-cookie", "a=1")
}

/// A first GET that the origin answers (its first call).
fn miss() -> Step {
    Step::get().expect(Expect::status(200).calls(1))
}

/// A case whose response is stored: a miss, then a hit with the same body.
fn stored(name: &'static str, rfc: &'static str, response: Scripted) -> Case {
    let body = response.body.clone();
    Case::new(name, rfc)
        .script([response])
        .step(miss())
        .step(Step::get().expect(Expect::hit(1).body(body)))
}

/// A case whose response is not reused: the second GET reaches the origin too.
fn not_reused(name: &'static str, rfc: &'static str, response: Scripted) -> Case {
    let status = response.status.as_u16();
    Case::new(name, rfc)
        .script([response])
        .step(Step::get().expect(Expect::status(status).calls(1)))
        .step(Step::get().expect(Expect::status(status).calls(2)))
}

fn http_date(time: SystemTime) -> String {
    httpdate::fmt_http_date(time)
}

/// RFC 9111 §4.3.1, §5.2.2.2: a stale `must-revalidate` response is validated with its
/// `ETag`; a 304 refreshes it.
fn revalidation() -> Vec<Case> {
    vec![
        Case::new("must-revalidate", "9111 §4.3.1, §5.2.2.2")
            .script([Scripted::ok("validated body")
                .header("cache-control", "max-age=1, must-revalidate")
                .header("etag", "\"a\"")])
            .step(miss())
            .step(
                Step::get()
                    .when_stale()
                    .origin(
                        Scripted::new(304)
                            .header("cache-control", "max-age=60")
                            .header("etag", "\"a\""),
                    )
                    .expect(
                        Expect::status(200)
                            .body("validated body")
                            .calls(2)
                            .origin_saw("if-none-match", "\"a\"")
                            .cache_status("fwd=stale")
                            .cache_status("fwd-status=304"),
                    ),
            )
            .step(Step::get().expect(Expect::hit(2).body("validated body"))),
    ]
}

/// RFC 9111 §5.1: of a list-valued `Age` the first member counts; an invalid one is ignored.
fn age() -> Vec<Case> {
    vec![
        not_reused(
            "age-list-first-member",
            "9111 §5.1",
            Scripted::ok("aged")
                .header("cache-control", "max-age=3600")
                .header("age", "7200, 0"),
        ),
        stored(
            "age-invalid-ignored",
            "9111 §5.1",
            Scripted::ok("aged")
                .header("cache-control", "max-age=60")
                .header("age", "bogus"),
        ),
    ]
}

/// RFC 9213: the first valid targeted field in the cache's list replaces `Cache-Control`
/// (and `Expires`) for this cache.
fn targeted() -> Vec<Case> {
    let year_ahead = http_date(SystemTime::now() + 365 * DAY);
    vec![
        stored(
            "targeted-overrides-no-store",
            "9213 §2.1",
            Scripted::ok("targeted")
                .header("cdn-cache-control", "max-age=60")
                .header("cache-control", "no-store"),
        ),
        not_reused(
            "targeted-max-age-zero",
            "9213 §2.1",
            Scripted::ok("targeted")
                .header("cdn-cache-control", "max-age=0")
                .header("cache-control", "max-age=60")
                .header("expires", &year_ahead),
        ),
        not_reused(
            "targeted-no-store",
            "9213 §2.1",
            Scripted::ok("targeted")
                .header("cdn-cache-control", "no-store")
                .header("cache-control", "max-age=60"),
        ),
        not_reused(
            "targeted-private",
            "9213 §2.1",
            Scripted::ok("targeted")
                .header("cdn-cache-control", "private")
                .header("cache-control", "max-age=60"),
        ),
        stored(
            "targeted-first-in-list-wins",
            "9213 §2.2",
            Scripted::ok("targeted")
                .header("cachelayer-cache-control", "max-age=60")
                .header("cdn-cache-control", "no-store"),
        ),
        stored(
            "targeted-invalid-ignored",
            "9213 §2.1",
            Scripted::ok("targeted")
                .header("cdn-cache-control", "max-age=60,,;;\"")
                .header("cache-control", "max-age=60"),
        ),
        targeted_no_cache(),
    ]
}

/// RFC 9213 with RFC 9111 §5.2.2.4: a targeted `no-cache` stores the response but every
/// use is validated first.
fn targeted_no_cache() -> Case {
    let validator = || {
        Scripted::new(304)
            .header("cdn-cache-control", "no-cache")
            .header("cache-control", "max-age=60")
            .header("etag", "\"t\"")
    };
    let validated = |calls| {
        Step::get().expect(
            Expect::status(200)
                .body("targeted")
                .calls(calls)
                .origin_saw("if-none-match", "\"t\""),
        )
    };
    Case::new("targeted-no-cache", "9213 §2.1, 9111 §5.2.2.4")
        .script([
            Scripted::ok("targeted")
                .header("cdn-cache-control", "no-cache")
                .header("cache-control", "max-age=60")
                .header("etag", "\"t\""),
            validator(),
        ])
        .step(miss())
        .step(validated(2))
        .step(validated(3))
}

/// RFC 9111 §3.2, §4.3.4: a 304 (or a 206 with the same validator) updates the stored
/// header fields, except those the stored body depends on.
fn updating_headers() -> Vec<Case> {
    vec![update_from_304(), update_from_206()]
}

/// The response both updating cases store first.
fn version_one() -> Scripted {
    Scripted::ok("stored body v1")
        .header("etag", "\"v1\"")
        .header("cache-control", "max-age=1")
        .header("x-version", "1")
        .header("x-kept", "yes")
        .header("content-type", "text/plain")
}

fn update_from_304() -> Case {
    let updated = |expect: Expect| {
        expect
            .body("stored body v1")
            .header("x-version", "2")
            .header("x-kept", "yes")
            .header("content-type", "text/plain")
    };
    Case::new("update-headers-from-304", "9111 §3.2, §4.3.4")
        .script([version_one()])
        .step(miss())
        .step(
            Step::get()
                .when_stale()
                .origin(
                    Scripted::new(304)
                        .header("etag", "\"v1\"")
                        .header("cache-control", "max-age=60")
                        .header("x-version", "2")
                        .header("content-type", "application/evil"),
                )
                .expect(
                    updated(Expect::status(200))
                        .calls(2)
                        .origin_saw("if-none-match", "\"v1\""),
                ),
        )
        .step(Step::get().expect(updated(Expect::hit(2))))
}

fn update_from_206() -> Case {
    let length = version_one().body.len();
    Case::new("update-headers-from-206", "9111 §3.2, §3.4, §4.3.4")
        .script([version_one()])
        .step(miss())
        .step(
            Step::get()
                .when_stale()
                .header("range", "bytes=0-1")
                .origin(
                    // An origin that ignores conditionals: a plain 206 of the same version.
                    Scripted::new(206)
                        .header("etag", "\"v1\"")
                        .header("content-range", &format!("bytes 0-1/{length}"))
                        .header("x-version", "3")
                        .header("cache-control", "max-age=60")
                        .body("st"),
                )
                .expect(
                    Expect::status(206)
                        .body("st")
                        .header("x-version", "3")
                        .calls(2),
                ),
        )
        .step(
            Step::get().expect(
                Expect::hit(2)
                    .body("stored body v1")
                    .header("x-version", "3")
                    .header("x-kept", "yes"),
            ),
        )
}

/// RFC 9111 §1.2.2: delta-seconds past 2^31 mean 2^31; far-future `Expires` is fresh.
fn large_freshness() -> Vec<Case> {
    vec![
        stored(
            "max-age-two-to-the-31",
            "9111 §1.2.2",
            Scripted::ok("long").header("cache-control", "max-age=2147483648"),
        ),
        stored(
            "max-age-overflowing",
            "9111 §1.2.2",
            Scripted::ok("long").header("cache-control", "max-age=99999999999999"),
        ),
        stored(
            "expires-year-2100",
            "9111 §5.3",
            Scripted::ok("long").header("expires", "Fri, 31 Dec 2100 23:59:59 GMT"),
        ),
    ]
}

/// RFC 9110 §5.6.7: a recipient accepts the obsolete date formats and any case; RFC 9111
/// §5.3: an invalid `Expires` means already expired.
fn expires_formats() -> Vec<Case> {
    let expiring = |expires: &str| Scripted::ok("dated").header("expires", expires);
    vec![
        stored(
            "expires-rfc850",
            "9110 §5.6.7, 9111 §5.3",
            expiring("Thursday, 01-Jan-37 00:00:00 GMT"),
        ),
        stored(
            "expires-asctime",
            "9110 §5.6.7, 9111 §5.3",
            expiring("Thu Jan  1 00:00:00 2037"),
        ),
        stored(
            "expires-lowercase",
            "9110 §5.6.7, 9111 §5.3",
            expiring("thu, 01 jan 2037 00:00:00 gmt"),
        ),
        not_reused("expires-invalid", "9111 §5.3", expiring("soon")),
    ]
}

/// RFC 9111 §5.2.2.4: an unqualified `no-cache` response is stored, but validated before
/// every use.
fn no_cache() -> Vec<Case> {
    let cache_control = "no-cache, max-age=60";
    vec![
        Case::new("no-cache-response", "9111 §5.2.2.4")
            .script([
                Scripted::ok("first")
                    .header("cache-control", cache_control)
                    .header("etag", "\"n\""),
                Scripted::new(304)
                    .header("cache-control", cache_control)
                    .header("etag", "\"n\""),
            ])
            .step(miss())
            .step(
                Step::get().expect(
                    Expect::status(200)
                        .body("first")
                        .calls(2)
                        .origin_saw("if-none-match", "\"n\""),
                ),
            ),
    ]
}

/// RFC 9111 §4.2.2: responses with a heuristically cacheable status and `Last-Modified`
/// get a heuristic lifetime; other statuses do not.
fn heuristics() -> Vec<Case> {
    vec![
        heuristic("heuristic-200", 200),
        heuristic("heuristic-301", 301),
        heuristic("heuristic-404", 404),
        heuristic("heuristic-410", 410),
        not_reused(
            "heuristic-500-not-stored",
            "9111 §4.2.2",
            last_modified(500),
        ),
    ]
}

/// A response with no explicit freshness, modified ten days before its `Date` (now).
fn last_modified(status: u16) -> Scripted {
    let now = SystemTime::now();
    let response = Scripted::new(status)
        .header("date", &http_date(now))
        .header("last-modified", &http_date(now - 10 * DAY))
        .body(format!("status {status}"));
    if status == 301 {
        response.header("location", "/elsewhere")
    } else {
        response
    }
}

fn heuristic(name: &'static str, status: u16) -> Case {
    let response = last_modified(status);
    let body = response.body.clone();
    Case::new(name, "9111 §4.2.2")
        .script([response])
        .step(Step::get().expect(Expect::status(status).calls(1)))
        .step(
            Step::get().expect(
                Expect::status(status)
                    .header("x-cache", "HIT")
                    .body(body)
                    .calls(1)
                    .cache_status("detail=heuristic"),
            ),
        )
}

/// RFC 9110 §14: a cache answers range requests from a stored complete response.
fn ranges() -> Vec<Case> {
    let partial = |body: &'static str, content_range: &str| {
        Expect::status(206)
            .body(body)
            .header("content-range", content_range)
            .calls(1)
    };
    vec![
        range_case("range-middle", "bytes=2-4", partial("234", "bytes 2-4/10")),
        range_case(
            "range-open-ended",
            "bytes=7-",
            partial("789", "bytes 7-9/10"),
        ),
        range_case("range-suffix", "bytes=-3", partial("789", "bytes 7-9/10")),
        range_case(
            "range-unsatisfiable",
            "bytes=20-",
            Expect::status(416)
                .header("content-range", "bytes */10")
                .calls(1),
        ),
        range_case(
            "range-multiple",
            "bytes=0-1,4-5",
            Expect::status(206).calls(1).check(check_multiple_ranges),
        ),
        if_range_case("if-range-matching", "\"r\"", partial("234", "bytes 2-4/10")),
        if_range_case(
            "if-range-other",
            "\"other\"",
            Expect::status(200)
                .body(DIGITS)
                .absent("content-range")
                .calls(1),
        ),
    ]
}

/// The stored complete response the range cases read from.
fn digits() -> Scripted {
    Scripted::ok(DIGITS)
        .header("cache-control", "max-age=60")
        .header("etag", "\"r\"")
}

fn range_case(name: &'static str, range: &str, expect: Expect) -> Case {
    Case::new(name, "9110 §14.2, §14.4, §15.3.7, §15.5.17")
        .script([digits()])
        .step(miss())
        .step(Step::get().header("range", range).expect(expect))
}

fn if_range_case(name: &'static str, if_range: &str, expect: Expect) -> Case {
    Case::new(name, "9110 §13.1.5, §14.2")
        .script([digits()])
        .step(miss())
        .step(
            Step::get()
                .header("range", "bytes=2-4")
                .header("if-range", if_range)
                .expect(expect),
        )
}

/// `bytes=0-1,4-5` of the digits: a `multipart/byteranges` 206 with parts `01` and `45`,
/// or (as RFC 9110 §14.2 allows) the whole body in a 200.
fn check_multiple_ranges(reply: &super::Reply) -> Result<(), String> {
    match reply.status.as_u16() {
        200 if reply.body == DIGITS => Ok(()),
        206 => {
            let content_type = reply
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let parts = multipart_parts(content_type, &reply.body)
                .ok_or_else(|| format!("206 that is not multipart/byteranges: {content_type:?}"))?;
            if parts == [b"01".as_slice(), b"45".as_slice()] {
                Ok(())
            } else {
                let shown: Vec<_> = parts.iter().map(|p| String::from_utf8_lossy(p)).collect();
                Err(format!("parts {shown:?} (expected [\"01\", \"45\"])"))
            }
        }
        other => Err(format!(
            "status {other} (expected a multipart 206 or a whole 200)"
        )),
    }
}

/// The bodies of a `multipart/byteranges` payload, or `None` if it is not one.
fn multipart_parts<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<&'a [u8]>> {
    let (kind, parameters) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    let boundary = parameters
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    // Before the first delimiter is the preamble; a segment starting `--` is the close.
    for segment in split_on(body, delimiter.as_bytes()).into_iter().skip(1) {
        if segment.starts_with(b"--") {
            return Some(parts);
        }
        let at = find(segment, b"\r\n\r\n")?;
        let content = &segment[at + 4..];
        parts.push(content.strip_suffix(b"\r\n").unwrap_or(content));
    }
    None
}

fn split_on<'a>(haystack: &'a [u8], needle: &[u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = haystack;
    while let Some(at) = find(rest, needle) {
        pieces.push(&rest[..at]);
        rest = &rest[at + needle.len()..];
    }
    pieces.push(rest);
    pieces
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// RFC 9111 §4.1: request values a response varies on match after normalisation (list
/// order, whitespace, case where the field is case-insensitive).
fn vary() -> Vec<Case> {
    vec![
        Case::new("vary-language-normalised", "9111 §4.1")
            .script([varying("accept-language")])
            .step(
                Step::get()
                    .header("accept-language", "en-US, fr;q=0.5")
                    .expect(Expect::status(200).calls(1)),
            )
            .step(
                Step::get()
                    .header("accept-language", "fr;q=0.5,EN-us")
                    .expect(Expect::hit(1)),
            )
            .step(
                Step::get()
                    .header("accept-language", "de")
                    .expect(Expect::status(200).calls(2)),
            ),
        same_variant(
            "vary-encoding-normalised",
            "accept-encoding",
            "gzip, br",
            "br,gzip",
        ),
        same_variant("vary-whitespace-normalised", "x-flavour", "a ,  b", "a, b"),
    ]
}

fn varying(field: &str) -> Scripted {
    Scripted::ok("variant")
        .header("cache-control", "max-age=60")
        .header("vary", field)
}

fn same_variant(name: &'static str, field: &str, first: &str, second: &str) -> Case {
    Case::new(name, "9111 §4.1")
        .script([varying(field)])
        .step(
            Step::get()
                .header(field, first)
                .expect(Expect::status(200).calls(1)),
        )
        .step(Step::get().header(field, second).expect(Expect::hit(1)))
}

/// RFC 9111 §4, RFC 9110 §9.3.3: a POST response with explicit freshness and a
/// `Content-Location` equal to its URI may answer a later GET; another URI may not.
fn post() -> Vec<Case> {
    vec![
        post_case(
            "post-content-location-same",
            "",
            Expect::hit(1).body("posted"),
        ),
        post_case(
            "post-content-location-other",
            "/other",
            Expect::status(200).body("fetched by GET").calls(2),
        ),
    ]
}

/// A POST answered with `Content-Location` at `suffix` below the case's path, then a GET
/// of the case's path; the origin answers a GET differently, to tell who answered it.
fn post_case(name: &'static str, suffix: &str, get: Expect) -> Case {
    let location = format!("{}{suffix}", Case::path_of(name));
    Case::new(name, "9111 §4, 9110 §9.3.3")
        .script([
            Scripted::ok("posted")
                .header("content-location", &location)
                .header("cache-control", "max-age=60"),
            Scripted::ok("fetched by GET").header("cache-control", "max-age=60"),
        ])
        .step(Step::post().expect(Expect::status(200).body("posted").calls(1)))
        .step(Step::get().expect(get))
}

/// RFC 9111 §5.2.2.3: `must-understand` with `no-store` stores responses whose status the
/// cache understands, and only those.
fn must_understand() -> Vec<Case> {
    let response = |status| {
        Scripted::new(status)
            .header("cache-control", "must-understand, no-store, max-age=60")
            .body("understood")
    };
    vec![
        stored("must-understand-200", "9111 §5.2.2.3", response(200)),
        not_reused("must-understand-599", "9111 §5.2.2.3", response(599)),
    ]
}

/// RFC 9111 §4.3.2: without `Last-Modified`, `If-Modified-Since` is judged against the
/// stored response's `Date`.
fn conditional() -> Vec<Case> {
    let now = SystemTime::now();
    let date = now - HOUR;
    vec![
        if_modified_since(
            "if-modified-since-after-date",
            date,
            now,
            Expect::status(304).calls(1),
        ),
        if_modified_since(
            "if-modified-since-before-date",
            date,
            date - DAY,
            Expect::status(200).body("dated").calls(1),
        ),
    ]
}

fn if_modified_since(
    name: &'static str,
    date: SystemTime,
    since: SystemTime,
    expect: Expect,
) -> Case {
    Case::new(name, "9111 §4.3.2")
        .script([Scripted::ok("dated")
            .header("date", &http_date(date))
            .header("cache-control", "max-age=86400")])
        .step(miss())
        .step(
            Step::get()
                .header("if-modified-since", &http_date(since))
                .expect(expect),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multipart payload as RFC 9110 §14.6 shows it yields its parts' bodies.
    #[test]
    fn multipart_parts_are_read() {
        let body = b"--THIS\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\r\n--THIS\r\nContent-Range: bytes 4-5/10\r\n\r\n45\r\n--THIS--\r\n";
        let parts = multipart_parts("multipart/byteranges; boundary=THIS", body);
        assert_eq!(parts, Some(vec![b"01".as_slice(), b"45".as_slice()]));
        assert_eq!(multipart_parts("text/plain", body), None);
    }
}
