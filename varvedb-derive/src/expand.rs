//! Writes the `impl varvedb::Event`.

use std::fmt::Write as _;

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{parse_quote, DeriveInput, Member};

use crate::ast::{Body, Errors, Input, Shape, Style};
use crate::attr::canonical;
use crate::valid::{self, Settings};

pub(crate) fn derive(node: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let Some(input) = Input::from_syn(node, &mut errors) else {
        return errors
            .into_error()
            .map(syn::Error::into_compile_error)
            .unwrap_or_default();
    };
    let settings = valid::check(&input, &mut errors);
    match errors.into_error() {
        // The impl is still written (with defaults in place of rejected
        // values) so that uses of the type do not add errors of their own.
        Some(error) => {
            let error = error.into_compile_error();
            let imp = impl_event(&input, &settings);
            quote!(#error #imp)
        }
        None => {
            let imp = impl_event(&input, &settings);
            let check = check_archivable(&input);
            let chain = check_chain(&input);
            quote!(#imp #check #chain)
        }
    }
}

fn impl_event(input: &Input, settings: &Settings) -> TokenStream {
    let ident = input.ident;
    let mut generics = input.generics.clone();
    // `for<'_>` keeps the bound from being "trivially false" for a type without
    // generics that lacks rkyv's traits: then the impl is only unusable, and the
    // one error the user sees is the short one from `check_archivable`.
    generics
        .make_where_clause()
        .predicates
        .push(parse_quote!(for<'__varvedb> Self: ::varvedb::__private::Archivable));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();

    let stream = Literal::string(&settings.stream);
    let buffer = Literal::u64_unsuffixed(settings.buffer);
    let name = Literal::string(&ident.unraw().to_string());
    let version = Literal::u32_unsuffixed(settings.version);
    let fingerprint = Literal::u64_unsuffixed(fingerprint(input, settings));
    let event_name = Literal::string(&settings.name);
    let (previous, upcast) = match &input.attrs.upcast_from {
        Some(old) => (
            quote!(#old),
            quote_spanned! {old.span()=>
                <Self as ::varvedb::__private::Upcast<#old>>::upcast(previous)
            },
        ),
        None => (
            quote!(::varvedb::__private::NoPrevious),
            quote!(match *previous {}),
        ),
    };

    quote! {
        #[automatically_derived]
        impl #impl_generics ::varvedb::__private::Event for #ident #ty_generics #where_clause {
            const STREAM: &'static ::varvedb::__private::str = #stream;
            const BUFFER_SIZE: ::varvedb::__private::usize = #buffer;
            const TYPE_NAME: &'static ::varvedb::__private::str = ::varvedb::__private::concat!(
                ::varvedb::__private::module_path!(),
                "::",
                #name
            );
            const VERSION: ::varvedb::__private::u32 = #version;
            const FINGERPRINT: ::varvedb::__private::u64 = #fingerprint;
            const NAME: &'static ::varvedb::__private::str = #event_name;
            type Previous = #previous;
            fn upcast(
                previous: &<Self::Previous as ::varvedb::__private::Lineage>::Archived,
            ) -> Self
            where
                Self: ::varvedb::__private::Sized,
            {
                #upcast
            }
        }
    }
}

/// For `upcast_from = Old` on a type without generics: compile-time checks
/// that `Old` is an event of the same name and stream with a lower version.
/// (A generic type's chain is checked by the store when it binds the stream.)
fn check_chain(input: &Input) -> TokenStream {
    let Some(old) = &input.attrs.upcast_from else {
        return TokenStream::new();
    };
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let ident = input.ident;
    let private = quote!(::varvedb::__private);
    let event = quote!(#private::Event);
    let checks = [
        (
            quote!(#private::same_str(<#old as #event>::NAME, <#ident as #event>::NAME)),
            "`upcast_from` names an event with another `name`: every version of an event \
             shares one name (give both `#[event(name = \"...\")]`)",
        ),
        (
            quote!(#private::same_str(<#old as #event>::STREAM, <#ident as #event>::STREAM)),
            "`upcast_from` names an event of another stream: every version of an event \
             lives in the same stream (give both the same `#[event(stream = \"...\")]`)",
        ),
        (
            quote!(<#old as #event>::VERSION < <#ident as #event>::VERSION),
            "`version` must be greater than the version of the type named by `upcast_from`",
        ),
    ];
    let checks = checks.iter().map(|(condition, message)| {
        quote_spanned! {old.span()=>
            const _: () = #private::assert!(#condition, #message);
        }
    });
    quote!(#(#checks)*)
}

/// For a type without generics, a check that it implements rkyv's traits,
/// reported at the type's name. (A generic type is checked where it is used.)
fn check_archivable(input: &Input) -> TokenStream {
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let ident = input.ident;
    let assert = quote_spanned!(ident.span()=> ::varvedb::__private::assert_archivable::<#ident>());
    quote! {
        const _: () = #assert;
    }
}

/// 64-bit FNV-1a of a canonical description of the type: its event name, version,
/// and each field's name (or index), position, type as written and
/// `#[rkyv(...)]` attributes; for an enum, each variant's name and fields.
/// Never 0, which the store reads as "no fingerprint".
fn fingerprint(input: &Input, settings: &Settings) -> u64 {
    // The event's name, not the type's path: moving the type or renaming it
    // (keeping `name`) or the crate leaves the fingerprint as it was. With no
    // `name`, this text is what earlier versions hashed, so their stored
    // fingerprints still match.
    let mut text = String::new();
    let _ = writeln!(
        text,
        "varvedb-event 1\ntype {}\nversion {}",
        settings.name, settings.version
    );
    match &input.body {
        Body::Struct(shape) => describe(shape, &mut text),
        Body::Enum(variants) => {
            let _ = writeln!(text, "enum {}", variants.len());
            for variant in variants {
                let _ = writeln!(text, "variant {}", variant.ident.unraw());
                describe(&variant.shape, &mut text);
            }
        }
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

fn describe(shape: &Shape, text: &mut String) {
    let style = match shape.style {
        Style::Named => "named",
        Style::Tuple => "tuple",
        Style::Unit => "unit",
    };
    let _ = writeln!(text, "{style} {}", shape.fields.len());
    for field in &shape.fields {
        match &field.member {
            Member::Named(ident) => {
                let _ = write!(text, "field {}: ", ident.unraw());
            }
            Member::Unnamed(index) => {
                let _ = write!(text, "field {}: ", index.index);
            }
        }
        let mut ty = String::new();
        canonical(field.ty.to_token_stream(), &mut ty);
        text.push_str(&ty);
        for attr in &field.rkyv {
            let mut tokens = String::new();
            canonical(attr.meta.to_token_stream(), &mut tokens);
            let _ = write!(text, " #[{tokens}]");
        }
        text.push('\n');
    }
}
