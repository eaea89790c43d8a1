//! What `#[cached]` needs to know about the function it wraps: whether it is a method, its
//! arguments, and the shape of its result.
//!
//! Shapes are recognised by name (`Result<..>` and `Option<..>`, by their last path
//! segment), because a macro sees tokens, not types. This module must never guess past that:
//! anything else is a plain value.

use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

/// One named argument.
pub(crate) struct Argument {
    pub(crate) name: Ident,
    pub(crate) ty: Type,
}

/// How the function's result is cached.
pub(crate) enum Shape {
    /// Any value: cached as it is.
    Value,
    /// `Option<T>`: `Some` is cached; `None` only with `negative`.
    Optional,
    /// `Result<T, E>`: `Ok` is cached; errors never are.
    Fallible,
}

/// The analysed function.
pub(crate) struct Analysed {
    pub(crate) has_receiver: bool,
    pub(crate) arguments: Vec<Argument>,
    pub(crate) output: Type,
    pub(crate) shape: Shape,
}

pub(crate) fn analyse(function: &ItemFn) -> syn::Result<Analysed> {
    let signature = &function.sig;
    if signature.asyncness.is_none() {
        return Err(syn::Error::new(
            signature.fn_token.span(),
            "#[cached] caches async functions; make this an `async fn`",
        ));
    }
    let mut has_receiver = false;
    let mut arguments = Vec::new();
    for input in &signature.inputs {
        match input {
            FnArg::Receiver(_) => has_receiver = true,
            FnArg::Typed(typed) => {
                let Pat::Ident(pattern) = &*typed.pat else {
                    return Err(syn::Error::new(
                        typed.pat.span(),
                        "#[cached] needs a plain name for each argument (a pattern cannot be part of a cache key)",
                    ));
                };
                arguments.push(Argument {
                    name: pattern.ident.clone(),
                    ty: (*typed.ty).clone(),
                });
            }
        }
    }
    let output = match &signature.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Type::ImplTrait(_) = output {
        return Err(syn::Error::new(
            output.span(),
            "#[cached] needs a concrete result type to store and read back, not `impl Trait`",
        ));
    }
    let shape = shape_of(&output);
    Ok(Analysed {
        has_receiver,
        arguments,
        output,
        shape,
    })
}

fn shape_of(output: &Type) -> Shape {
    let Type::Path(path) = output else {
        return Shape::Value;
    };
    let Some(last) = path.path.segments.last() else {
        return Shape::Value;
    };
    let generic = match &last.arguments {
        PathArguments::AngleBracketed(arguments) => arguments
            .args
            .iter()
            .any(|argument| matches!(argument, GenericArgument::Type(_))),
        _ => false,
    };
    match last.ident.to_string().as_str() {
        "Result" if generic => Shape::Fallible,
        "Option" if generic => Shape::Optional,
        _ => Shape::Value,
    }
}

/// Why a type cannot be part of a key even though it serializes: its serialization order
/// differs between processes.
/// Looks through references, tuples, slices and generic arguments (`Option<HashSet<_>>`),
/// and catches the common `HashSet` variants by name (`FxHashSet`, `AHashSet`). A set inside
/// a struct of the caller's cannot be seen here; the docs say so.
pub(crate) fn unstable_key_type(ty: &Type) -> Option<&'static str> {
    const REASON: &str = "a HashSet iterates in a different order in every process, so its cache key would differ; use a BTreeSet, or leave it out with `ignore(...)`";
    match peel_references(ty) {
        Type::Path(path) => {
            let last = path.path.segments.last()?;
            if last.ident.to_string().ends_with("HashSet") {
                return Some(REASON);
            }
            let PathArguments::AngleBracketed(arguments) = &last.arguments else {
                return None;
            };
            arguments.args.iter().find_map(|argument| match argument {
                GenericArgument::Type(inner) => unstable_key_type(inner),
                _ => None,
            })
        }
        Type::Tuple(tuple) => tuple.elems.iter().find_map(unstable_key_type),
        Type::Slice(slice) => unstable_key_type(&slice.elem),
        Type::Array(array) => unstable_key_type(&array.elem),
        _ => None,
    }
}

fn peel_references(ty: &Type) -> &Type {
    match ty {
        Type::Reference(reference) => peel_references(&reference.elem),
        Type::Paren(inner) => peel_references(&inner.elem),
        other => other,
    }
}

/// The type a generated key helper takes for an argument of type `ty`: a reference to it,
/// or `ty` itself when it already is one.
pub(crate) fn borrowed(ty: &Type) -> Type {
    match ty {
        // A key only reads its arguments: `&mut T` is taken as `&T`.
        Type::Reference(reference) => {
            let mut shared = reference.clone();
            shared.mutability = None;
            Type::Reference(shared)
        }
        // `&impl A + B` would not parse as intended: parenthesise.
        Type::ImplTrait(_) | Type::TraitObject(_) => syn::parse_quote!(&(#ty)),
        other => syn::parse_quote!(&#other),
    }
}
