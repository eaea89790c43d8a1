//! `#[cached]`: cache any async function through a `cachelayer::Cache`, with stable keys,
//! stampede protection and per-call invalidation.
//!
//! Use it as `cachelayer::cached`, with the `macros` feature of `cachelayer`; its
//! documentation, with every option, is on the [`cached`] attribute. This crate only parses
//! and expands the attribute (`options`, `signature`, `expand`); what the expansion calls
//! lives in `cachelayer`, so this crate must never depend on it at run time.

mod expand;
#[cfg(test)]
mod fuzz;
mod options;
mod signature;

use proc_macro::TokenStream;

/// Caches an async function through a `cachelayer::Cache`: stable keys, one run of the body
/// per key across every process sharing the store, stale serving, and helpers to build and
/// invalidate the key of one call.
///
/// Enable it with the `macros` feature of `cachelayer` and use it as `cachelayer::cached`.
///
/// ```
/// use cachelayer::{Cache, cached};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Product {
///     id: u64,
///     name: String,
/// }
///
/// #[derive(Debug, Clone)]
/// struct DbError;
///
/// /// Reads a product; cached for 5 minutes under `product:<id>`.
/// #[cached(ttl = "5m", key = "product:{id}")]
/// async fn get_product(cache: &Cache, id: u64) -> Result<Product, DbError> {
///     Ok(Product { id, name: format!("product {id}") }) // the database query
/// }
///
/// #[tokio::main]
/// async fn main() -> cachelayer::Result<()> {
///     let cache = Cache::builder().build()?;
///     let first = get_product(&cache, 7).await; // runs the body, stores the value
///     let again = get_product(&cache, 7).await; // served from the cache
///     assert_eq!(first.ok(), again.ok());
///     assert_eq!(get_product_key(&7)?.as_str(), "product:7");
///     get_product_invalidate(&cache, &7).await?; // after a write to product 7
///     Ok(())
/// }
/// ```
///
/// # Options
///
/// Every option is optional; `#[cached]` alone caches for the cache's default TTL under a
/// default key. Durations are a string (`"300ms"`, `"30s"`, `"5m"`, `"1h 30m"`: whole
/// milliseconds) or an integer of seconds (`ttl = 300`).
///
/// | option | meaning |
/// |---|---|
/// | `ttl = "5m"` | fresh lifetime. Default: the cache's `default_ttl`. Zero is refused (it would cache nothing) |
/// | `key = "product:{id}"` | a key template (below). Default: the function's path and a hash of its key arguments |
/// | `ignore(db, pool)` | arguments left out of the default key (connection pools, clients, request context); repeatable |
/// | `cache = state.cache` | the expression giving the `Cache` (anything that derefs to one); the arguments it names are left out of the key. Default: an argument named `cache`, else the process-wide cache of `Cache::set_global` |
/// | `stale = "30s"` | sets both stale windows below |
/// | `stale_while_revalidate = "30s"` | serve a value this long past its TTL while one refresh runs (RFC 5861) |
/// | `stale_if_error = "1h"` | serve a value this long past its TTL when the body fails (RFC 5861) |
/// | `early_refresh_beta = 1.0` | XFetch beta, 0 (off) to 100; above 1 refreshes earlier |
/// | `lock = false` | skip the fleet-wide load lock: calls are coalesced per process only |
/// | `lock_ttl = "5s"` | initial lease of the load lock, renewed while the body runs |
/// | `lock_max_wait = "5s"` | longest wait for another process's run of the body |
/// | `negative = "30s"` | for `Option<T>` results: cache `None` this long |
/// | `unless = \|p: &Product\| p.draft` | a predicate on the value: when true, the value is returned but not stored |
///
/// Options not given fall back to the cache's `StampedeSettings` (see `cachelayer::LoadOptions`).
/// An unknown or malformed option, a bad duration or a beta out of range is a compile error
/// on the option at fault, listing the valid ones.
///
/// # Key templates
///
/// `key = "tenant:{tenant}:user:{id}"` is `:`-separated segments, each either fixed text of
/// `A-Z a-z 0-9 _ - .` (kept verbatim) or exactly one `{argument}` naming an argument of the
/// function, in any order. A placeholder's value is the argument's `Display` output, escaped
/// as a key part (`cachelayer::Key::part`), so a value containing `:` or `*` cannot forge
/// another key. The store key is `<namespace>:v<version>:<template>`. A segment mixing text
/// and a placeholder (`product-{id}`), a placeholder that names no argument, or an argument
/// that is not `Display` is a compile error.
///
/// # Default keys
///
/// Without a template, the key is the function's path and a SHA-256 of its key arguments as
/// canonical JSON (map keys sorted), so it is the same in every process and every build of
/// the same code:
///
/// - The path is `module::function` for free and associated functions and `Type::method`
///   (via `std::any::type_name::<Self>()`, stable within one build) for methods with a
///   receiver; a generic function adds its type arguments (`load::<User>` and
///   `load::<Order>` never share entries). Associated functions *without* a receiver in two
///   `impl` blocks of one module would share a path: give them a `key` template.
/// - The receiver (`self`) is **never** part of the key: two instances of a type share
///   entries. If results depend on the instance (a per-tenant repository), put that in the
///   key, with the tenant as an argument.
/// - Key arguments must implement `Serialize`: one that does not is a compile error naming
///   it, suggesting `ignore`. A `HashSet` argument (also nested, as in
///   `Option<Vec<HashSet<_>>>`, or an `FxHashSet`) is refused because its order differs per
///   process; the macro cannot see a set inside your own struct, so keep such fields
///   `BTreeSet`s or leave the argument out with `ignore`. Maps are fine: keys are sorted.
/// - `ignore`d arguments are not in the key, so calls that differ only in them share an
///   entry: ignore only what does not change the result (pools, clients, tracing context).
///
/// # Where the cache comes from
///
/// The `cache` option, else an argument named `cache` (a `Cache`, `&Cache`, `Arc<Cache>` or
/// anything that derefs to one), else `Cache::global()`. Without any, calls run the body
/// uncached and a warning is logged once. A key that cannot be built at run time (a key
/// argument whose `Serialize` fails) also runs the body uncached, with a warning.
///
/// ```
/// use std::sync::Arc;
///
/// use cachelayer::{Cache, cached};
///
/// struct AppState {
///     cache: Arc<Cache>,
/// }
///
/// /// Stands in for a database connection pool.
/// struct Pool;
///
/// struct Catalogue;
///
/// impl Catalogue {
///     /// One entry per `(query, page)`; the receiver, `state` and `pool` are not in the key.
///     #[cached(cache = state.cache, ignore(pool), ttl = "1m", stale = "30s")]
///     async fn search(&self, state: &AppState, pool: &Pool, query: &str, page: u32) -> Vec<String> {
///         let _ = pool;
///         vec![format!("{query} #{page}")]
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> cachelayer::Result<()> {
///     let state = AppState { cache: Arc::new(Cache::builder().build()?) };
///     let found = Catalogue.search(&state, &Pool, "lamp", 1).await;
///     assert_eq!(found, ["lamp #1"]);
///     // The helpers are associated functions of the type, taking the key arguments.
///     Catalogue::search_invalidate(&state.cache, "lamp", &1).await?;
///     Ok(())
/// }
/// ```
///
/// # Results
///
/// `T` is cached as it is; `Option<T>` caches `Some` (and `None` with `negative`);
/// `Result<T, E>` caches `Ok` and never an error. The shape is read from the return type's
/// name, so spell it `Result<..>` / `Option<..>` (any path ending in those names, such as
/// `io::Result<T>`), not through another alias. Values must be `Serialize +
/// DeserializeOwned + Clone + Send + Sync + 'static`. `negative` on a function that does not
/// return `Option` is a compile error.
///
/// ```
/// use cachelayer::{Cache, cached};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Product {
///     id: u64,
///     draft: bool,
/// }
///
/// /// A missing product is cached for 10 s; drafts are returned but never stored.
/// #[cached(ttl = "5m", negative = "10s", unless = |p: &Product| p.draft)]
/// async fn find_product(cache: &Cache, id: u64) -> Option<Product> {
///     (id < 100).then(|| Product { id, draft: id % 2 == 1 })
/// }
///
/// #[tokio::main]
/// async fn main() -> cachelayer::Result<()> {
///     let cache = Cache::builder().build()?;
///     assert_eq!(find_product(&cache, 404).await, None);
///     assert_eq!(find_product(&cache, 2).await, Some(Product { id: 2, draft: false }));
///     Ok(())
/// }
/// ```
///
/// # Errors, panics and concurrency
///
/// Concurrent calls with the same key run the body once (per process, and with the store's
/// lock across processes). When the body fails, a `Clone` error is returned to every caller
/// that waited; an error type that cannot be cloned is returned to the caller that ran the
/// body, and each waiting caller runs the body itself in turn. Errors are never cached;
/// within `stale_if_error` the stale value is returned instead. A panic in the body panics
/// every caller that waited on it. Because the body borrows the call's arguments, an early
/// or stale refresh runs in the call that triggers it (other callers keep being served);
/// the wrapped function's future must be `Send` if the caller needs it to be. A cache that
/// is down, slow or holding garbage never fails a call: the body runs and its result is
/// returned.
///
/// # Helpers
///
/// Each cached function `f` comes with `f_key(args..) -> cachelayer::Result<Key>` and
/// `async f_invalidate(&Cache, args..) -> cachelayer::Result<()>`, taking its key arguments
/// by reference in signature order, beside it (associated functions when `f` is in an
/// `impl` block), so write paths can drop exactly the entry they changed. Helpers of a
/// generic function may need a turbofish (`f_key::<T>(..)`).
///
/// # Limits
///
/// - Only `async fn`: anything else is a compile error.
/// - Not in trait `impl` blocks (the helpers are not trait members): cache a private
///   inherent method and call it from the trait method.
/// - `unless` runs after the body, which has taken ownership of the arguments: the predicate
///   can only look at the value.
/// - Errors (`E`) must be `Send + Sync + 'static`.
///
/// A mistake is reported at the option or argument at fault, and the function as written
/// is kept, so that error is the only one.
#[proc_macro_attribute]
pub fn cached(attributes: TokenStream, item: TokenStream) -> TokenStream {
    let original = proc_macro2::TokenStream::from(item.clone());
    let expanded = syn::parse::<options::CachedOptions>(attributes).and_then(|options| {
        let function = syn::parse::<syn::ItemFn>(item)?;
        let analysed = signature::analyse(&function)?;
        expand::expand(options, function, analysed)
    });
    match expanded {
        Ok(expanded) => expanded.into(),
        // The function as written stays, so the error above is the only one reported.
        Err(err) => {
            let error = err.into_compile_error();
            quote::quote!(#error #original).into()
        }
    }
}
