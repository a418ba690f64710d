//! Reads the `#[event(...)]` attributes: which keys were given, with which
//! literal. Syntax and type mistakes are reported here; values are checked in
//! `valid`.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, Lit, LitInt, LitStr, Meta, Token};

use crate::ast::Errors;

/// The keys `#[event(...)]` accepts, in the order error messages list them.
pub(crate) const KEYS: [&str; 5] = ["stream", "buffer", "version", "name", "upcast_from"];

/// The keys given on the type. `None` means the key was absent (or its value
/// could not be read, which was reported).
#[derive(Default)]
pub(crate) struct Attrs {
    pub(crate) stream: Option<LitStr>,
    pub(crate) buffer: Option<IntValue>,
    pub(crate) version: Option<IntValue>,
    pub(crate) name: Option<LitStr>,
    pub(crate) upcast_from: Option<syn::Type>,
}

/// An integer literal and its value; `value` is `None` when it does not fit in
/// a `u64` (reported by `valid` as out of range).
pub(crate) struct IntValue {
    pub(crate) lit: LitInt,
    pub(crate) value: Option<u64>,
}

impl IntValue {
    pub(crate) fn span(&self) -> Span {
        self.lit.span()
    }
}

const SYNTAX: &str =
    "expected `#[event(key = value, ...)]` with keys `stream`, `buffer`, `version`, `name` \
     or `upcast_from`, e.g. `#[event(stream = \"orders\")]`";

/// Reads every `#[event(...)]` in `attrs`, which may each hold several keys.
pub(crate) fn parse(attrs: &[Attribute], errors: &mut Errors) -> Attrs {
    let mut out = Attrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        let list = match &attr.meta {
            Meta::List(list) => list,
            Meta::Path(_) | Meta::NameValue(_) => {
                errors.push(syn::Error::new_spanned(attr, SYNTAX));
                continue;
            }
        };
        if !matches!(list.delimiter, syn::MacroDelimiter::Paren(_)) {
            errors.push(syn::Error::new_spanned(attr, SYNTAX));
            continue;
        }
        if let Err(e) = list.parse_nested_meta(|meta| read_key(&meta, &mut out, errors)) {
            errors.push(e);
        }
    }
    out
}

/// Reports every `#[event(...)]` in `attrs`: it belongs on the type, not on
/// `place` (a field or a variant).
pub(crate) fn reject(attrs: &[Attribute], place: &str, errors: &mut Errors) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        errors.push(syn::Error::new_spanned(
            attr,
            format!("`#[event(...)]` goes on the type, not on a {place}"),
        ));
    }
}

fn read_key(meta: &ParseNestedMeta, out: &mut Attrs, errors: &mut Errors) -> syn::Result<()> {
    let key = meta
        .path
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_default();
    if !KEYS.contains(&key.as_str()) {
        let mut message = format!(
            "unknown key `{}` in `#[event(...)]`; expected `stream`, `buffer`, `version`, `name` or `upcast_from`",
            meta.path.to_token_stream().to_string().replace(' ', "")
        );
        if let Some(near) = KEYS.iter().find(|k| edit_distance(k, &key) <= 2) {
            message.push_str(&format!(" (did you mean `{near}`?)"));
        }
        errors.push(syn::Error::new_spanned(&meta.path, message));
        return skip_value(meta);
    }
    let already = match key.as_str() {
        "stream" => out.stream.is_some(),
        "buffer" => out.buffer.is_some(),
        "name" => out.name.is_some(),
        "upcast_from" => out.upcast_from.is_some(),
        _ => out.version.is_some(),
    };
    if key == "upcast_from" {
        // A type, not a literal: `upcast_from = OrderPlacedV1`.
        if !meta.input.peek(Token![=]) {
            errors.push(syn::Error::new_spanned(
                &meta.path,
                "`upcast_from` needs a value: `upcast_from = OrderPlacedV1` (the previous version's type)",
            ));
            return skip_value(meta);
        }
        let ty: syn::Type = meta.value()?.parse()?;
        if already {
            errors.push(duplicate(meta, &key));
        } else {
            out.upcast_from = Some(ty);
        }
        return Ok(());
    }
    let Some(value) = read_value(meta, &key, errors)? else {
        return Ok(());
    };
    if already {
        errors.push(duplicate(meta, &key));
        return Ok(());
    }
    match key.as_str() {
        "stream" => match string(&value) {
            Some(lit) => out.stream = Some(lit),
            None => errors.push(wrong_type(&value, "`stream` takes a string literal, e.g. `stream = \"orders\"`")),
        },
        "name" => match string(&value) {
            Some(lit) => out.name = Some(lit),
            None => errors.push(wrong_type(&value, "`name` takes a string literal, e.g. `name = \"OrderPlaced\"`")),
        },
        "buffer" => match integer(&value, "usize") {
            Ok(int) => out.buffer = Some(int),
            Err(suffixed) => errors.push(wrong_type(
                &value,
                if suffixed {
                    "`buffer` takes an integer without a suffix (or with `usize`), e.g. `buffer = 4096`"
                } else {
                    "`buffer` takes an integer literal (a size in bytes), e.g. `buffer = 4096`"
                },
            )),
        },
        _ => match integer(&value, "u32") {
            Ok(int) => out.version = Some(int),
            Err(suffixed) => errors.push(wrong_type(
                &value,
                if suffixed {
                    "`version` takes an integer without a suffix (or with `u32`), e.g. `version = 2`"
                } else {
                    "`version` takes an integer literal, e.g. `version = 2`"
                },
            )),
        },
    }
    Ok(())
}

fn duplicate(meta: &ParseNestedMeta, key: &str) -> syn::Error {
    syn::Error::new_spanned(
        &meta.path,
        format!("duplicate key `{key}`: each key may be given once"),
    )
}

/// The expression after `key =`, or `None` (reported) if the key has no value.
fn read_value(meta: &ParseNestedMeta, key: &str, errors: &mut Errors) -> syn::Result<Option<Expr>> {
    if meta.input.peek(Token![=]) {
        return meta.value()?.parse::<Expr>().map(Some);
    }
    let example = match key {
        "stream" => "stream = \"orders\"",
        "buffer" => "buffer = 4096",
        "name" => "name = \"OrderPlaced\"",
        _ => "version = 2",
    };
    errors.push(syn::Error::new_spanned(
        &meta.path,
        format!("`{key}` needs a value: `{example}`"),
    ));
    skip_value(meta)?;
    Ok(None)
}

/// Consumes whatever follows an unusable key (`= expr` or a `(...)` group), so
/// the keys after it are still read.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
}

fn literal(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(ExprLit { lit, attrs }) if attrs.is_empty() => Some(lit),
        Expr::Group(group) => literal(&group.expr),
        _ => None,
    }
}

fn string(value: &Expr) -> Option<LitStr> {
    match literal(value) {
        Some(Lit::Str(lit)) if lit.suffix().is_empty() => Some(lit.clone()),
        _ => None,
    }
}

/// The integer literal in `value`; `Err(true)` if it has a suffix other than
/// `allowed`, `Err(false)` if it is not an integer literal.
fn integer(value: &Expr, allowed: &str) -> Result<IntValue, bool> {
    match literal(value) {
        Some(Lit::Int(lit)) if lit.suffix().is_empty() || lit.suffix() == allowed => Ok(IntValue {
            lit: lit.clone(),
            value: lit.base10_parse::<u64>().ok(),
        }),
        Some(Lit::Int(_)) => Err(true),
        _ => Err(false),
    }
}

fn wrong_type(value: &Expr, message: &str) -> syn::Error {
    syn::Error::new_spanned(value, message)
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The tokens of `tokens` as one canonical string: single spaces between
/// tokens, whatever the source spacing was (used for fingerprints).
pub(crate) fn canonical(tokens: TokenStream, out: &mut String) {
    use proc_macro2::{Delimiter, TokenTree};
    for token in tokens {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        match token {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                canonical(group.stream(), out);
                out.push_str(close);
            }
            TokenTree::Ident(ident) => out.push_str(&ident.to_string()),
            TokenTree::Punct(punct) => out.push(punct.as_char()),
            TokenTree::Literal(lit) => out.push_str(&lit.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("stream", "stream"), 0);
        assert_eq!(edit_distance("stream", "strem"), 1);
        assert_eq!(edit_distance("version", "versoin"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn canonical_form_ignores_spacing() {
        let mut a = String::new();
        canonical(quote::quote!(Option<Vec<u8>>), &mut a);
        let mut b = String::new();
        canonical("Option < Vec<u8> >".parse().unwrap(), &mut b);
        assert_eq!(a, b);
        assert_eq!(a, "Option < Vec < u8 > >");
    }
}
