//! `#[cached]`: cache any async function through a `cachelayer::Cache`, with stable keys,
//! stampede protection and per-call invalidation. Use it as `cachelayer::cached` (the
//! `macros` feature of `cachelayer`).
//!
//! ```
//! use cachelayer::{Cache, cached};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Product { id: u64, name: String }
//!
//! #[derive(Debug, Clone)]
//! struct DbError;
//!
//! /// Reads a product; cached for 5 minutes under `product:<id>`.
//! #[cached(ttl = "5m", key = "product:{id}")]
//! async fn get_product(cache: &Cache, id: u64) -> Result<Product, DbError> {
//!     Ok(Product { id, name: format!("product {id}") }) // the database query
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cachelayer::Result<()> {
//! let cache = Cache::builder().build()?;
//! let first = get_product(&cache, 7).await;           // runs the body, stores the value
//! let again = get_product(&cache, 7).await;           // served from the cache
//! assert_eq!(first.ok(), again.ok());
//! assert_eq!(get_product_key(&7)?.as_str(), "product:7");
//! get_product_invalidate(&cache, &7).await?;          // after a write to product 7
//! # Ok(()) }
//! ```
//!
//! # Options
//!
//! | option | meaning |
//! |---|---|
//! | `ttl = "5m"` or `ttl = 300` | fresh lifetime (a duration string, or seconds); default: the cache's `default_ttl` |
//! | `key = "product:{id}"` | key template: `:`-separated segments, each fixed text (`A-Z a-z 0-9 _ - .`) or one `{argument}` (its `Display` value, escaped so it cannot forge another key). Default: the function's path (`module::function`, or `Type::method` for methods) and a SHA-256 of the key arguments as canonical JSON |
//! | `ignore(db, pool)` | arguments left out of the default key (connection pools, clients, request context) |
//! | `cache = state.cache` | the expression giving the `Cache` (anything that derefs to one); its arguments are left out of the key. Default: an argument named `cache`, else the process-wide cache of `Cache::set_global` (without one, calls run uncached and a warning is logged once) |
//! | `stale = "30s"`, `stale_while_revalidate = ..`, `stale_if_error = ..` | serve stale values within these windows (RFC 5861); `stale` sets both |
//! | `early_refresh_beta = 1.0`, `lock = false`, `lock_ttl = ..`, `lock_max_wait = ..` | stampede options (see `cachelayer::LoadOptions`) |
//! | `negative = "30s"` | for `Option<T>` results: cache `None` this long |
//! | `unless = \|p: &Product\| p.draft` | a predicate on the value: when true, the value is returned but not stored |
//!
//! # Results
//!
//! `T` is cached as it is; `Option<T>` caches `Some` (and `None` with `negative`);
//! `Result<T, E>` caches `Ok` and never an error. The shape is read from the return type's
//! name, so spell it `Result<..>` / `Option<..>` (any path ending in those names, such as
//! `io::Result<T>`), not through another alias. Values must be `Serialize + DeserializeOwned
//! + Clone + Send + Sync + 'static`.
//!
//! Concurrent calls with the same key run the body once (per process, and with the store's
//! lock across processes). When the body fails, a `Clone` error is returned to every caller
//! that waited; an error type that cannot be cloned is returned to the caller that ran the
//! body, and each waiting caller runs the body itself in turn. A panic in the body panics
//! every caller that waited on it. Because the body borrows the call's arguments, an early
//! or stale refresh runs in the call that triggers it (other callers keep being served);
//! the wrapped function's future must be `Send` if the caller needs it to be.
//!
//! # Keys: what is and is not in them
//!
//! - The receiver (`self`) is **never** part of the default key: two instances of a type
//!   share entries. If results depend on the instance (a per-tenant repository), put that in
//!   the key: `key = "tenant:{tenant}:user:{id}"` with the tenant as an argument.
//! - The default path is `module::function` for free and associated functions and
//!   `Type::method` (via `std::any::type_name::<Self>()`, stable within one build) for methods
//!   with a receiver; a generic function adds its type arguments (`load::<User>` and
//!   `load::<Order>` never share entries). Associated functions *without* a receiver in two
//!   `impl` blocks of one module would share a path: give them a `key` template.
//! - A `HashSet` argument (also nested, as in `Option<Vec<HashSet<_>>>`, or an `FxHashSet`) is
//!   refused because its order differs per process; the macro cannot see a set inside your
//!   own struct, so keep such fields `BTreeSet`s or leave the argument out with `ignore`.
//!   Maps are fine: default keys sort map keys.
//! - `ignore`d arguments are not in the key, so calls that differ only in them share an
//!   entry: ignore only what does not change the result (pools, clients, tracing context).
//!
//! # Limits
//!
//! - Not in trait `impl` blocks (the helpers are not trait members): cache a private
//!   inherent method and call it from the trait method.
//! - `unless` runs after the body, which has taken ownership of the arguments: the predicate
//!   can only look at the value.
//! - Errors (`E`) must be `Send + Sync + 'static`; helpers of a generic function may need a
//!   turbofish (`f_key::<T>(..)`).
//!
//! # Helpers
//!
//! Each cached function `f` comes with `f_key(args..) -> cachelayer::Result<Key>` and
//! `async f_invalidate(&Cache, args..) -> cachelayer::Result<()>`, taking its key arguments
//! by reference, beside it (associated functions when `f` is in an `impl` block), so write
//! paths can drop exactly the entry they changed.

mod expand;
mod options;
mod signature;

use proc_macro::TokenStream;

/// Caches an async function; see the [crate documentation](crate).
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
