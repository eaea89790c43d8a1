//! Fuzz target: the header parsers behind the HTTP layer's RFC 9111 decisions
//! (`http::policy`): `Cache-Control` (request and response), `Pragma`, `Age`, `Date`,
//! `Expires` and `Last-Modified`, as `storable`, `initial_age`, `RequestDirectives` and
//! `usable` read them from clients and origins.
//!
//! Checked: every parser is total (any field bytes); directives written in any valid spelling
//! (case, whitespace, empty list elements, quoted strings holding commas, several fields) are
//! read as written, and a field list reads as the same list joined into one field; what is
//! stored obeys the refusals and freshness order of RFC 9111; ages and lifetimes computed
//! from dates are the RFC's arithmetic. This module must never restate a rule more loosely
//! than the RFC to hide a finding (one it cannot fix is a `known_*` exception that
//! describes it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use proptest::collection::vec;
use proptest::prelude::*;

use super::stored::{header_name, header_value};
use crate::http::key::vary_values;
use crate::http::policy::{
    CacheControl, NotStored, RequestDirectives, SetCookieResponses, StatusSet, StoreRules, Usable,
    initial_age, parse_date, storable, usable,
};

/// RFC 9111 section 1.2.2: delta-seconds past 2^31 are 2^31.
const MAX_DELTA_SECONDS: u64 = 1 << 31;
/// The last second `httpdate` can write (the end of year 9999).
const LAST_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// Directive names the layer reads, and others it must ignore.
const KNOWN: [&str; 15] = [
    "max-age",
    "s-maxage",
    "no-store",
    "no-cache",
    "private",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "stale-while-revalidate",
    "stale-if-error",
    "max-stale",
    "min-fresh",
    "only-if-cached",
    "no-transform",
    "immutable",
];

/// A directive's argument as written.
#[derive(Debug, Clone)]
enum Argument {
    None,
    Token(String),
    /// The text between the quotes, escapes as written.
    Quoted(String),
}

#[derive(Debug, Clone)]
struct Directive {
    /// As written (any case).
    name: String,
    argument: Argument,
}

impl Directive {
    fn render(&self) -> String {
        match &self.argument {
            Argument::None => self.name.clone(),
            Argument::Token(token) => format!("{}={token}", self.name),
            Argument::Quoted(text) => format!("{}=\"{text}\"", self.name),
        }
    }

    /// The argument as the parser hands it on: tokens as written, quoted strings without
    /// their quotes.
    fn value(&self) -> Option<&str> {
        match &self.argument {
            Argument::None => None,
            Argument::Token(text) | Argument::Quoted(text) => Some(text),
        }
    }
}

fn with_random_case(name: String) -> impl Strategy<Value = String> {
    vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

fn directive_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KNOWN.to_vec()).prop_map(str::to_owned),
        1 => "[a-z][a-z0-9-]{0,10}",
    ]
    .prop_flat_map(with_random_case)
}

/// Quoted-string content (RFC 9110 section 5.6.4): text, and quoted pairs; commas, `=` and
/// what looks like other directives included.
fn quoted_text() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            4 => "[ !#-\\[\\]-~]".prop_map(|c| c),
            1 => "[ -~]".prop_map(|c| format!("\\{c}")),
            1 => prop::sample::select(vec![", private", ",no-store", ", max-age=1", "="])
                .prop_map(str::to_owned),
        ],
        0..8,
    )
    .prop_map(|pieces| pieces.concat())
}

fn argument() -> impl Strategy<Value = Argument> {
    prop_oneof![
        3 => Just(Argument::None),
        3 => "[0-9]{1,3}".prop_map(Argument::Token),
        1 => "[0-9]{9,25}".prop_map(Argument::Token),
        1 => "-?[0-9a-zA-Z!#$%&'*+.^_`|~-]{1,10}".prop_map(Argument::Token),
        1 => "[0-9]{1,4}".prop_map(Argument::Quoted),
        2 => quoted_text().prop_map(Argument::Quoted),
    ]
}

fn directive() -> impl Strategy<Value = Directive> {
    (directive_name(), argument()).prop_map(|(name, argument)| Directive { name, argument })
}

/// Optional whitespace around list elements (RFC 9110 section 5.6.1).
fn ows() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\t", "  "])
}

/// Directives spelled as one or more `Cache-Control` fields: each element with whitespace
/// around it, empty elements here and there, the list cut into fields between elements.
fn spelled(directives: Vec<Directive>) -> impl Strategy<Value = Vec<String>> {
    let n = directives.len();
    (
        vec((ows(), ows(), prop::bool::weighted(0.1)), n),
        vec(prop::bool::weighted(0.3), n),
    )
        .prop_map(move |(spacing, cuts)| {
            let mut fields = vec![String::new()];
            for ((directive, (before, after, empty)), cut) in
                directives.iter().zip(spacing).zip(cuts)
            {
                let field = fields.last_mut().expect("one field at least");
                if !field.is_empty() {
                    field.push(',');
                }
                if empty {
                    field.push_str(" ,");
                }
                field.push_str(before);
                field.push_str(&directive.render());
                field.push_str(after);
                if cut {
                    fields.push(String::new());
                }
            }
            fields
        })
}

fn fields_of(name: &'static str, values: &[String]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(name, HeaderValue::from_str(value).expect("a valid field"));
    }
    headers
}

/// What the parser must say about `directives`: present names, and each delta-seconds.
fn check_reads_as_written(
    cc: &CacheControl,
    directives: &[Directive],
) -> Result<(), TestCaseError> {
    let lower = |d: &Directive| d.name.to_ascii_lowercase();
    for name in KNOWN
        .iter()
        .map(|n| (*n).to_owned())
        .chain(directives.iter().map(lower))
    {
        let written: Vec<&Directive> = directives.iter().filter(|d| lower(d) == name).collect();
        prop_assert_eq!(cc.has(&name), !written.is_empty(), "{}", name);
        let expected = match written.as_slice() {
            [only] => only.value().and_then(delta_seconds),
            _ => None,
        };
        prop_assert_eq!(cc.seconds(&name), expected, "{}", name);
    }
    Ok(())
}

/// RFC 9111 section 1.2.2: digits only; a value too large for the cache is 2^31.
fn delta_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = text.trim_start_matches('0');
    let seconds = if digits.len() > 10 {
        MAX_DELTA_SECONDS
    } else {
        digits.parse::<u64>().unwrap_or(0).min(MAX_DELTA_SECONDS)
    };
    Some(Duration::from_secs(seconds))
}

/// Field values of the kinds origins and clients send for dates: valid ones, the "0" many
/// send in `Expires`, and garbage.
fn date_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0..=LAST_HTTP_DATE_SECS).prop_map(http_date),
        1 => prop::sample::select(vec!["0", "-1", "", "Thu, 01 Jan 1970 00:00:00 GMT"])
            .prop_map(str::to_owned),
        1 => "[ -~]{0,32}",
        1 => ((0..=LAST_HTTP_DATE_SECS), any::<prop::sample::Index>(), "[ -~]")
            .prop_map(|(secs, at, c)| {
                let mut text = http_date(secs);
                let at = at.index(text.len());
                text.replace_range(at..=at, &c);
                text
            }),
    ]
}

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn age_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,6}",
        "[0-9]{1,30}",
        prop::sample::select(vec!["-1", " 5 ", "5, 6", "", "1e3", "+5"]).prop_map(str::to_owned),
    ]
}

/// One response or request field: a structured value for the fields the policy reads, or
/// any field at all.
fn field() -> impl Strategy<Value = (HeaderName, HeaderValue)> {
    let text = |name: &'static str, value: BoxedStrategy<String>| {
        value.prop_filter_map("a valid field", move |v| {
            Some((
                HeaderName::from_static(name),
                HeaderValue::from_str(&v).ok()?,
            ))
        })
    };
    let cache_control = vec(directive(), 0..5)
        .prop_flat_map(spelled)
        .prop_map(|fields| fields.join(", "))
        .boxed();
    prop_oneof![
        4 => text("cache-control", cache_control),
        1 => text("cache-control", "[ -~]{0,40}".boxed()),
        2 => text("expires", date_text().boxed()),
        2 => text("date", date_text().boxed()),
        1 => text("last-modified", date_text().boxed()),
        1 => text("age", age_text().boxed()),
        1 => text("vary", "(\\*|accept|Accept-Language|x-lang| |,){0,4}".boxed()),
        1 => text("set-cookie", Just("id=1".to_owned()).boxed()),
        1 => text("authorization", Just("Bearer t".to_owned()).boxed()),
        1 => text("pragma", "(no-cache|,| |x){0,3}".boxed()),
        1 => (header_name(), header_value()),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    vec(field(), 0..7).prop_map(|fields| {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(name, value);
        }
        map
    })
}

fn rules() -> impl Strategy<Value = StoreRules> {
    (
        proptest::option::of((0u64..100_000).prop_map(Duration::from_secs)),
        proptest::option::of(vec(100u16..1000, 0..6)),
        any::<bool>(),
        prop::sample::select(vec![
            SetCookieResponses::Refuse,
            SetCookieResponses::Strip,
            SetCookieResponses::Store,
        ]),
    )
        .prop_map(
            |(default_ttl, statuses, heuristic, set_cookie)| StoreRules {
                default_ttl,
                default_ttl_statuses: statuses
                    .map_or(crate::http::policy::DEFAULT_TTL_STATUSES, |codes| {
                        StatusSet::of(&codes)
                    }),
                heuristic,
                set_cookie,
                ..StoreRules::default()
            },
        )
}

/// A decision of `storable`, checked against RFC 9111's refusals and freshness order.
fn check_storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    rules: &StoreRules,
) -> Result<(), TestCaseError> {
    let decision = storable(method, request, status, response, rules);
    let request_cc = CacheControl::parse(request);
    let cc = CacheControl::parse(response);
    let unstorable_status = status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if method != Method::GET {
        prop_assert_eq!(decision, Err(NotStored::Method));
        return Ok(());
    }
    if unstorable_status {
        prop_assert_eq!(decision, Err(NotStored::Status));
        return Ok(());
    }
    // `must-understand` replaces the response's `no-store`, never the request's.
    if request_cc.has("no-store") || (cc.has("no-store") && !cc.has("must-understand")) {
        prop_assert_eq!(decision, Err(NotStored::NoStore));
        return Ok(());
    }
    let Ok(stored) = decision else {
        return Ok(());
    };
    prop_assert!(!cc.has_unqualified("private"));
    prop_assert_eq!(stored.no_cache, cc.has_unqualified("no-cache"));
    if request.contains_key(http::header::AUTHORIZATION) {
        prop_assert!(cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate"));
    }
    prop_assert!(
        vary_values(response, request).is_some(),
        "Vary: * is never stored"
    );
    prop_assert!(
        rules.set_cookie != SetCookieResponses::Refuse
            || !response.contains_key(http::header::SET_COOKIE)
            || cc.qualified_fields().contains(&http::header::SET_COOKIE)
    );
    // Only a no-cache response (revalidated on every use) is stored without freshness.
    prop_assert!(!stored.freshness.is_zero() || stored.no_cache);
    // s-maxage, then max-age: a present one decides, however it is spelled (an invalid one
    // means none).
    if cc.has("s-maxage") {
        prop_assert_eq!(stored.freshness, cc.seconds("s-maxage").unwrap_or_default());
    } else if cc.has("max-age") {
        prop_assert_eq!(stored.freshness, cc.seconds("max-age").unwrap_or_default());
    }
    prop_assert_eq!(
        stored.must_revalidate,
        cc.has("must-revalidate") || cc.has("proxy-revalidate") || cc.has("s-maxage")
    );
    prop_assert_eq!(
        stored.stale_while_revalidate,
        cc.seconds("stale-while-revalidate").unwrap_or_default()
    );
    prop_assert_eq!(
        stored.stale_if_error,
        cc.seconds("stale-if-error").unwrap_or_default()
    );
    Ok(())
}

proptest! {
    #![proptest_config(super::config())]

    /// Any bytes in any number of `Cache-Control` fields parse (no panic), and every
    /// delta-seconds read is within RFC 9111's range.
    #[test]
    fn fuzz_cache_control_parses_any_fields(values in vec(header_value(), 0..4)) {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(http::header::CACHE_CONTROL, value);
        }
        let cc = CacheControl::parse(&headers);
        for name in KNOWN {
            if let Some(seconds) = cc.seconds(name) {
                prop_assert!(cc.has(name) && seconds.as_secs() <= MAX_DELTA_SECONDS);
            }
        }
        let _ = RequestDirectives::of(&headers);
    }

    /// Directives in any valid spelling are read as written: names in any case, whitespace
    /// and empty elements, quoted strings holding commas and directive-like text, the list
    /// cut into several fields or joined into one.
    #[test]
    fn fuzz_cache_control_reads_directives_as_written(
        (directives, fields) in vec(directive(), 0..6)
            .prop_flat_map(|d| (Just(d.clone()), spelled(d)))
    ) {
        let split = CacheControl::parse(&fields_of("cache-control", &fields));
        check_reads_as_written(&split, &directives)?;
        let joined = CacheControl::parse(&fields_of("cache-control", &[fields.join(", ")]));
        prop_assert_eq!(&joined, &split);
        // A request reads the same directives.
        let request = RequestDirectives::of(&fields_of("cache-control", &fields));
        prop_assert_eq!(request.no_store, split.has("no-store"));
        prop_assert_eq!(request.no_cache, split.has("no-cache"));
        prop_assert_eq!(request.only_if_cached, split.has("only-if-cached"));
        prop_assert_eq!(request.max_age, split.seconds("max-age"));
        prop_assert_eq!(request.min_fresh, split.seconds("min-fresh"));
        // `max-stale` alone accepts any staleness; with an argument, that much or (invalid)
        // none.
        let max_stale = directives
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case("max-stale"))
            .map(|d| match d.value() {
                None => Some(None),
                Some(_) => split.seconds("max-stale").map(Some),
            });
        prop_assert_eq!(request.max_stale, max_stale.flatten());
    }

    /// What a shared cache stores, for any request and response fields, method, status and
    /// rules, obeys RFC 9111: the refusals in order, then freshness from s-maxage, then
    /// max-age.
    #[test]
    fn fuzz_storable_follows_rfc_9111(
        request in headers(),
        response in headers(),
        method in prop::sample::select(vec![Method::GET, Method::GET, Method::HEAD, Method::POST]),
        status in prop_oneof![Just(200u16), 100u16..1000],
        rules in rules(),
    ) {
        let status = StatusCode::from_u16(status).expect("a status");
        check_storable(&method, &request, status, &response, &rules)?;
        // And with no-store added, nothing is stored (unless must-understand stands for it).
        let mut refused = response.clone();
        refused.append(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if !CacheControl::parse(&refused).has("must-understand") {
            prop_assert!(storable(&method, &request, status, &refused, &rules).is_err());
        }
    }

    /// Freshness from `Expires` minus `Date` and ages from `Date` and `Age` are RFC 9111's
    /// arithmetic (sections 4.2.1 and 4.2.3), an overflowing `Age` counting as 2^31 s.
    #[test]
    fn fuzz_dates_and_age_follow_rfc_9111(
        date in 0..=LAST_HTTP_DATE_SECS,
        expires in 0..=LAST_HTTP_DATE_SECS,
        age in age_text(),
        request_delay in 0u64..1000,
        response_delay in 0u64..100_000,
    ) {
        let mut response = HeaderMap::new();
        response.append("date", HeaderValue::from_str(&http_date(date)).expect("a date"));
        response.append("expires", HeaderValue::from_str(&http_date(expires)).expect("a date"));
        let decision = storable(&Method::GET, &HeaderMap::new(), StatusCode::OK, &response, &StoreRules::default());
        if expires > date {
            prop_assert_eq!(decision.map(|s| s.freshness), Ok(Duration::from_secs(expires - date)));
        } else {
            prop_assert_eq!(decision, Err(NotStored::NoFreshness));
        }

        let date_time = UNIX_EPOCH + Duration::from_secs(date);
        let request_time = date_time + Duration::from_secs(request_delay);
        let response_time = request_time + Duration::from_secs(response_delay);
        if let Ok(value) = HeaderValue::from_str(&age) {
            response.insert("age", value);
        }
        // The first member of a list counts (RFC 9111 section 5.1); an invalid one is ignored.
        let first = age.split(',').next().unwrap_or_default().trim();
        let age_seconds = delta_seconds(first).unwrap_or_default();
        let apparent = Duration::from_secs(request_delay + response_delay);
        let corrected = age_seconds + Duration::from_secs(response_delay);
        prop_assert_eq!(
            initial_age(&response, request_time, response_time),
            apparent.max(corrected),
            "Age {:?}", age
        );
    }

    /// Whether a stored response may answer a request follows the request's directives and
    /// the response's facts (RFC 9111 sections 4.2 and 5.2.1), for any request fields.
    #[test]
    fn fuzz_request_directives_decide_use(
        request in headers(),
        freshness in 0u64..10_000,
        age in 0u64..20_000,
        must_revalidate in any::<bool>(),
    ) {
        let directives = RequestDirectives::of(&request);
        let cc = CacheControl::parse(&request);
        let pragma_no_cache = !request.contains_key(http::header::CACHE_CONTROL)
            && request.get_all(http::header::PRAGMA).iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-cache")));
        prop_assert_eq!(directives.no_cache, cc.has("no-cache") || pragma_no_cache);
        let facts = crate::http::policy::Storable {
            must_revalidate,
            ..crate::http::policy::Storable::fresh_for(Duration::from_secs(freshness))
        };
        let age = Duration::from_secs(age);
        let fresh_left = facts.freshness.checked_sub(age).filter(|left| !left.is_zero());
        let too_old = directives.max_age.is_some_and(|max| age > max);
        match usable(&facts, age, &directives) {
            Usable::Fresh => {
                let left = fresh_left.expect("fresh means time left");
                prop_assert!(!directives.no_cache && !too_old);
                prop_assert!(directives.min_fresh.is_none_or(|min| left >= min));
            }
            Usable::StaleAccepted => {
                prop_assert!(fresh_left.is_none() && !must_revalidate && !directives.no_cache && !too_old);
                let staleness = age - facts.freshness;
                prop_assert!(matches!(directives.max_stale, Some(None)) || matches!(directives.max_stale, Some(Some(limit)) if staleness <= limit));
            }
            Usable::Stale(by) => {
                prop_assert!(fresh_left.is_none() && !must_revalidate && !directives.no_cache && !too_old);
                prop_assert_eq!(by, age - facts.freshness);
            }
            Usable::Revalidate(by) => {
                prop_assert!(fresh_left.is_none() && must_revalidate && !directives.no_cache && !too_old);
                prop_assert_eq!(by, age - facts.freshness);
            }
            Usable::Refused => {
                let min_fresh_unmet = fresh_left.is_some_and(|left| directives.min_fresh.is_some_and(|min| left < min));
                prop_assert!(directives.no_cache || too_old || min_fresh_unmet);
            }
        }
    }

    /// Any bytes in a targeted field (RFC 9213) parse or are ignored, never a panic; what
    /// parses reads every delta within RFC 9111's range, and a cache obeying it decides.
    #[test]
    fn fuzz_targeted_fields_parse_any_bytes(
        values in vec(prop_oneof![
            3 => "[a-z-]{1,14}(=([0-9]{1,12}|\"[ -~]{0,10}\"|\\?[01]|[a-z]{1,6}))?(, [a-z-]{1,14}(=[0-9]{1,4})?){0,3}",
            1 => "[ -~]{0,40}",
        ], 1..3),
        response in headers(),
    ) {
        let name = HeaderName::from_static("cdn-cache-control");
        let mut fields = response.clone();
        for value in &values {
            if let Ok(value) = HeaderValue::from_str(value) {
                fields.append(name.clone(), value);
            }
        }
        if let Some(cc) = CacheControl::parse_targeted(&fields, &name) {
            for directive in KNOWN {
                if let Some(seconds) = cc.seconds(directive) {
                    prop_assert!(seconds.as_secs() <= MAX_DELTA_SECONDS);
                }
            }
        }
        let rules = StoreRules {
            targeted: std::sync::Arc::from([name]),
            ..StoreRules::default()
        };
        let _ = storable(&Method::GET, &HeaderMap::new(), StatusCode::OK, &fields, &rules);
    }

    /// A date in any of the three formats RFC 9110 section 5.6.7 names, its letters in any
    /// case, reads as the time it writes.
    #[test]
    fn fuzz_dates_read_in_any_format_and_case(
        secs in 0..=LAST_HTTP_DATE_SECS,
        format in 0..3usize,
        upper in vec(any::<bool>(), 40),
    ) {
        let time = UNIX_EPOCH + Duration::from_secs(secs);
        let imf = http_date(secs);
        // From the IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT": the other two spellings.
        let parts: Vec<&str> = imf.split(' ').collect();
        let (day, date, month, year, clock) = (parts[0].trim_end_matches(','), parts[1], parts[2], parts[3], parts[4]);
        let full_day = match day {
            "Mon" => "Monday", "Tue" => "Tuesday", "Wed" => "Wednesday", "Thu" => "Thursday",
            "Fri" => "Friday", "Sat" => "Saturday", _ => "Sunday",
        };
        let year_number: u64 = year.parse().expect("a year");
        // RFC 850 dates carry two digits: only years the reader maps back are written so.
        let rfc850_readable = (1970..2070).contains(&year_number);
        let text = match format {
            1 if rfc850_readable => format!("{full_day}, {date}-{month}-{} {clock} GMT", &year[2..]),
            2 => format!("{day} {month} {:>2} {clock} {year}", date.trim_start_matches('0')),
            _ => imf.clone(),
        };
        let cased: String = text
            .chars()
            .zip(upper.iter().cycle())
            .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
            .collect();
        prop_assert_eq!(parse_date(&cased), Some(time), "{:?}", cased);
    }
}

/// A `Date` in the past of `SystemTime::now()` is what most origins send: the freshness
/// order holds there too (a fixed case beside the fuzzed ones, no clock involved).
#[test]
fn expires_without_date_is_against_now() {
    let mut response = HeaderMap::new();
    let later = SystemTime::now() + Duration::from_secs(3600);
    response.append(
        "expires",
        HeaderValue::from_str(&httpdate::fmt_http_date(later)).expect("a date"),
    );
    let decision = storable(
        &Method::GET,
        &HeaderMap::new(),
        StatusCode::OK,
        &response,
        &StoreRules::default(),
    )
    .expect("stored");
    assert!(decision.freshness > Duration::from_secs(3500));
}
