//! Code generation for `#[cached]`: the wrapped function, and its `<name>_key` and
//! `<name>_invalidate` helpers.
//!
//! Generated code calls only `::cachelayer::__private` and the public `cachelayer` API, so
//! a cached function behaves exactly as a hand-written `get_with` would. This module must
//! never emit code that depends on where the function sits (module or `impl` block): helpers
//! are siblings that work as free functions and as associated functions alike.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Expr, Ident, ItemFn};

use crate::options::{CachedOptions, KeyTemplate, Segment};
use crate::signature::{Analysed, Argument, Shape, borrowed, unstable_key_type};

pub(crate) fn expand(
    options: CachedOptions,
    function: ItemFn,
    analysed: Analysed,
) -> syn::Result<TokenStream> {
    let key_arguments = key_arguments(&options, &analysed)?;
    if let Some((_, span)) = options.negative
        && !matches!(analysed.shape, Shape::Optional)
    {
        return Err(syn::Error::new(
            span,
            "`negative` caches a \"not found\", so it needs a function returning `Option<T>`",
        ));
    }
    let name = &function.sig.ident;
    let name_text = name.to_string();
    let base = if analysed.has_receiver {
        quote!(::cachelayer::__private::method_path::<Self>(#name_text))
    } else {
        quote!(::std::string::String::from(
            ::core::concat!(::core::module_path!(), "::", #name_text)
        ))
    };
    // Type parameters are part of the default key: `load::<User>(1)` is not `load::<Order>(1)`.
    let type_parameters: Vec<&Ident> = function
        .sig
        .generics
        .type_params()
        .map(|p| &p.ident)
        .collect();
    let path = if type_parameters.is_empty() {
        base
    } else {
        quote!(::cachelayer::__private::generic_path(&#base, &[#(::core::any::type_name::<#type_parameters>()),*]))
    };
    let key = key_expression(&options, &key_arguments, &path);
    let wrapper = wrapper(&options, &function, &analysed, &key_arguments, &key, &path);
    let helpers = helpers(&function, &key_arguments, &key);
    Ok(quote! {
        #wrapper
        #helpers
    })
}

/// The arguments that make up the key: those named in the template, or every argument but
/// the ignored ones, the cache handle, and those the `cache` expression uses.
fn key_arguments<'a>(
    options: &CachedOptions,
    analysed: &'a Analysed,
) -> syn::Result<Vec<&'a Argument>> {
    let find = |name: &Ident| analysed.arguments.iter().find(|a| a.name == *name);
    for ignored in &options.ignore {
        if find(ignored).is_none() {
            return Err(syn::Error::new(
                ignored.span(),
                format!("`ignore` names `{ignored}`, which is not an argument of this function"),
            ));
        }
    }
    if let Some(template) = &options.key {
        let mut named = Vec::new();
        for segment in &template.segments {
            if let Segment::Argument(name) = segment {
                if find(name).is_none() {
                    return Err(syn::Error::new(
                        template.literal.span(),
                        format!(
                            "the key template names `{{{name}}}`, which is not an argument of this function"
                        ),
                    ));
                }
                named.push(name);
            }
        }
        // The helpers take them in signature order, once each.
        return Ok(analysed
            .arguments
            .iter()
            .filter(|a| named.contains(&&a.name))
            .collect());
    }
    // An argument named `cache` is the cache handle, unless the `cache` option says otherwise.
    let cache_handle = |a: &Argument| options.cache.is_none() && a.name == "cache";
    let used_by_cache = options.cache.as_ref().map(identifiers).unwrap_or_default();
    let chosen: Vec<&Argument> = analysed
        .arguments
        .iter()
        .filter(|a| {
            !cache_handle(a)
                && !options.ignore.contains(&a.name)
                && !used_by_cache.contains(&a.name)
        })
        .collect();
    for argument in &chosen {
        if let Some(reason) = unstable_key_type(&argument.ty) {
            return Err(syn::Error::new(argument.ty.span(), reason));
        }
    }
    Ok(chosen)
}

/// Every variable an expression reads (single-segment paths; `state.cache` reads `state`,
/// not a variable named `cache`).
fn identifiers(expression: &Expr) -> Vec<Ident> {
    struct Collect(Vec<Ident>);
    impl<'ast> Visit<'ast> for Collect {
        fn visit_expr_path(&mut self, path: &'ast syn::ExprPath) {
            if let Some(ident) = path.path.get_ident() {
                self.0.push(ident.clone());
            }
            syn::visit::visit_expr_path(self, path);
        }
    }
    let mut collect = Collect(Vec::new());
    collect.visit_expr(expression);
    collect.0
}

/// An expression of type `cachelayer::Result<Key>` over the key arguments, each bound to a
/// reference under its own name.
fn key_expression(
    options: &CachedOptions,
    arguments: &[&Argument],
    path: &TokenStream,
) -> TokenStream {
    match &options.key {
        Some(template) => template_key(template, arguments),
        None => {
            let values = arguments.iter().map(|a| {
                let name = &a.name;
                quote_spanned!(a.ty.span()=> ::cachelayer::__private::key_argument(#name))
            });
            quote! {
                ::cachelayer::__private::args_key(&#path, ::std::vec![#(#values),*])
            }
        }
    }
}

fn template_key(template: &KeyTemplate, arguments: &[&Argument]) -> TokenStream {
    let mut parts = template.segments.iter().map(|segment| match segment {
        Segment::Text(text) => quote!(#text),
        Segment::Argument(name) => {
            let span = arguments
                .iter()
                .find(|a| a.name == *name)
                .map_or_else(|| name.span(), |a| a.ty.span());
            quote_spanned!(span=> ::cachelayer::__private::key_template_argument(#name))
        }
    });
    let first = parts.next().unwrap_or_else(|| quote!(""));
    quote! {
        ::core::result::Result::Ok::<_, ::cachelayer::Error>(
            ::cachelayer::Key::new(#first)#(.part(#parts))*
        )
    }
}

fn millis(duration: Duration) -> TokenStream {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    quote!(::core::time::Duration::from_millis(#millis))
}

/// The `LoadOptions` of a call, given `__cl_cache` in scope.
fn load_options(options: &CachedOptions) -> TokenStream {
    let ttl = match options.ttl {
        Some(ttl) => millis(ttl),
        None => quote!(__cl_cache.default_ttl()),
    };
    let mut settings = Vec::new();
    let durations = [
        ("stale_while_revalidate", options.stale_while_revalidate),
        ("stale_if_error", options.stale_if_error),
        ("lock_ttl", options.lock_ttl),
        ("lock_max_wait", options.lock_max_wait),
    ];
    for (method, value) in durations {
        if let Some(value) = value {
            let method = format_ident!("{method}");
            let value = millis(value);
            settings.push(quote!(.#method(#value)));
        }
    }
    if let Some(beta) = options.early_refresh_beta {
        settings.push(quote!(.early_refresh_beta(#beta)));
    }
    if let Some(lock) = options.lock {
        settings.push(quote!(.lock(#lock)));
    }
    if let Some((negative, _)) = options.negative {
        let negative = millis(negative);
        settings.push(quote!(.negative_ttl(::core::option::Option::Some(#negative))));
    }
    quote!(::cachelayer::LoadOptions::ttl(#ttl) #(#settings)*)
}

/// Where the cache comes from: the `cache` option, an argument named `cache`, or the global.
fn cache_source(options: &CachedOptions, analysed: &Analysed, path: &TokenStream) -> TokenStream {
    if let Some(expression) = &options.cache {
        return quote_spanned!(expression.span()=>
            ::core::option::Option::Some(::cachelayer::Cache::clone(&(#expression))));
    }
    if analysed.arguments.iter().any(|a| a.name == "cache") {
        return quote!(::core::option::Option::Some(::cachelayer::Cache::clone(
            &cache
        )));
    }
    quote!(::cachelayer::__private::global_cache(&#path))
}

/// Whether to store a loaded value, given `__cl_value: &T`.
fn store_check(options: &CachedOptions) -> TokenStream {
    match &options.unless {
        Some(unless) => quote_spanned!(unless.span()=> {
            let __cl_unless = #unless;
            !__cl_unless(__cl_value)
        }),
        None => quote!(true),
    }
}

fn wrapper(
    options: &CachedOptions,
    function: &ItemFn,
    analysed: &Analysed,
    key_arguments: &[&Argument],
    key: &TokenStream,
    path: &TokenStream,
) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let output = &analysed.output;
    let bind = key_arguments.iter().map(|a| {
        let name = &a.name;
        quote!(let #name = &#name;)
    });
    let cache = cache_source(options, analysed, path);
    let load_options = load_options(options);
    let store = store_check(options);
    let (prelude, loader, finish, absent_ok, share_errors) = match &analysed.shape {
        Shape::Value => (
            quote!(),
            quote! {
                let __cl_value = __cl_body.await;
                let __cl_store = { let __cl_value = &__cl_value; #store };
                ::core::result::Result::Ok::<_, ::core::convert::Infallible>(
                    if __cl_store { ::cachelayer::__private::Fetched::cacheable(::core::option::Option::Some(__cl_value)) } else { ::cachelayer::__private::Fetched::uncacheable(::core::option::Option::Some(__cl_value)) })
            },
            quote! {
                ::core::result::Result::Ok(::core::option::Option::Some(__cl_value)) => __cl_value,
                ::core::result::Result::Ok(::core::option::Option::None) =>
                    ::core::unreachable!("a value load never produces a \"not found\""),
                ::core::result::Result::Err(__cl_err) => match ::cachelayer::__private::into_error(__cl_err, ::core::option::Option::None) {},
            },
            false,
            quote!(true),
        ),
        Shape::Optional => (
            quote!(),
            quote! {
                let __cl_found = __cl_body.await;
                let __cl_store = match &__cl_found {
                    ::core::option::Option::Some(__cl_value) => #store,
                    ::core::option::Option::None => true,
                };
                ::core::result::Result::Ok::<_, ::core::convert::Infallible>(
                    if __cl_store { ::cachelayer::__private::Fetched::cacheable(__cl_found) } else { ::cachelayer::__private::Fetched::uncacheable(__cl_found) })
            },
            quote! {
                ::core::result::Result::Ok(__cl_found) => __cl_found,
                ::core::result::Result::Err(__cl_err) => match ::cachelayer::__private::into_error(__cl_err, ::core::option::Option::None) {},
            },
            true,
            quote!(true),
        ),
        Shape::Fallible => (
            quote! {
                #[allow(unused_imports)]
                use ::cachelayer::__private::{ShareByClone as _, ShareNone as _};
                let __cl_cloner = (&::cachelayer::__private::error_sharing(&__cl_body)).cloner();
            },
            quote! {
                match __cl_body.await {
                    ::core::result::Result::Ok(__cl_ok) => {
                        let __cl_store = { let __cl_value = &__cl_ok; #store };
                        ::core::result::Result::Ok(if __cl_store { ::cachelayer::__private::Fetched::cacheable(::core::option::Option::Some(__cl_ok)) } else { ::cachelayer::__private::Fetched::uncacheable(::core::option::Option::Some(__cl_ok)) })
                    }
                    ::core::result::Result::Err(__cl_err) => ::core::result::Result::Err(__cl_err),
                }
            },
            quote! {
                ::core::result::Result::Ok(::core::option::Option::Some(__cl_value)) => ::core::result::Result::Ok(__cl_value),
                ::core::result::Result::Ok(::core::option::Option::None) =>
                    ::core::unreachable!("a value load never produces a \"not found\""),
                ::core::result::Result::Err(__cl_err) =>
                    ::core::result::Result::Err(::cachelayer::__private::into_error(__cl_err, __cl_cloner)),
            },
            false,
            quote!(__cl_cloner.is_some()),
        ),
    };
    // Invisible to the body (mixed-site hygiene), so no argument name can be shadowed.
    let key_local = Ident::new("__cl_key", Span::mixed_site());
    let cache_local = Ident::new("__cl_cache", Span::mixed_site());
    quote! {
        #(#attrs)*
        #vis #sig {
            let #key_local: ::cachelayer::Result<::cachelayer::Key> = { #(#bind)* #key };
            let #cache_local: ::core::option::Option<::cachelayer::Cache> = #cache;
            let __cl_body = async move {
                let __cl_out: #output = #block;
                __cl_out
            };
            #prelude
            let (__cl_cache, __cl_key) = match (#cache_local, #key_local) {
                (::core::option::Option::Some(__cl_cache), ::core::result::Result::Ok(__cl_key)) => (__cl_cache, __cl_key),
                (::core::option::Option::None, _) => return __cl_body.await,
                (::core::option::Option::Some(_), ::core::result::Result::Err(__cl_err)) => {
                    ::cachelayer::__private::uncached_call(&#path, &__cl_err);
                    return __cl_body.await;
                }
            };
            let __cl_options = #load_options;
            let __cl_loader = async move { #loader };
            match ::cachelayer::__private::load(&__cl_cache, __cl_key, __cl_options, #absent_ok, #share_errors, __cl_loader).await {
                #finish
            }
        }
    }
}

/// `<name>_key(args)` and `<name>_invalidate(cache, args)`, taking the key arguments by
/// reference.
fn helpers(function: &ItemFn, key_arguments: &[&Argument], key: &TokenStream) -> TokenStream {
    let vis = &function.vis;
    let name = &function.sig.ident;
    let key_fn = format_ident!("{}_key", name);
    let invalidate_fn = format_ident!("{}_invalidate", name);
    let generics = &function.sig.generics;
    // Mixed-site, so a key argument may itself be named `cache`.
    let cache_param = Ident::new("cache", Span::mixed_site());
    let where_clause = &function.sig.generics.where_clause;
    let params: Vec<TokenStream> = key_arguments
        .iter()
        .map(|a| {
            let name = &a.name;
            let ty = borrowed(&a.ty);
            quote!(#name: #ty)
        })
        .collect();
    let key_doc = format!("The cache key of one call of `{name}`, from its key arguments.");
    let invalidate_doc = format!(
        "Drop the cached result of one call of `{name}` (its key arguments given by reference); reports store failure like `Cache::invalidate`."
    );
    quote! {
        #[doc = #key_doc]
        #[allow(dead_code)]
        #vis fn #key_fn #generics (#(#params),*) -> ::cachelayer::Result<::cachelayer::Key> #where_clause {
            #key
        }

        #[doc = #invalidate_doc]
        #[allow(dead_code)]
        #vis async fn #invalidate_fn #generics (#cache_param: &::cachelayer::Cache, #(#params),*) -> ::cachelayer::Result<()> #where_clause {
            let __cl_key = #key?;
            #cache_param.invalidate(__cl_key).await
        }
    }
}
