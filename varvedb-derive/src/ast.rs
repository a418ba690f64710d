//! Reads the derive input into what the expansion needs: the type's name,
//! generics, `#[event(...)]` keys, and the shape of its fields and variants.

use syn::{Attribute, Data, DeriveInput, Fields, Generics, Ident, Member, Type};

use crate::attr::{self, Attrs};

/// Collects errors so that the user sees all of them at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn into_error(self) -> Option<syn::Error> {
        self.0
    }
}

/// A struct or enum that derives `Event`.
pub(crate) struct Input<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: Attrs,
    pub(crate) body: Body<'a>,
}

pub(crate) enum Body<'a> {
    Struct(Shape<'a>),
    Enum(Vec<Variant<'a>>),
}

pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) shape: Shape<'a>,
}

/// The fields of a struct or of one variant.
pub(crate) struct Shape<'a> {
    pub(crate) style: Style,
    pub(crate) fields: Vec<Field<'a>>,
}

#[derive(Clone, Copy)]
pub(crate) enum Style {
    Named,
    Tuple,
    Unit,
}

pub(crate) struct Field<'a> {
    /// The field's name, or its index in a tuple.
    pub(crate) member: Member,
    pub(crate) ty: &'a Type,
    /// The field's `#[rkyv(...)]` attributes, which can change its archived form.
    pub(crate) rkyv: Vec<&'a Attribute>,
}

impl<'a> Input<'a> {
    /// Reads `node`. Returns `None` (with the reason in `errors`) when no impl
    /// can be written for it at all, i.e. for a union.
    pub(crate) fn from_syn(node: &'a DeriveInput, errors: &mut Errors) -> Option<Input<'a>> {
        let attrs = attr::parse(&node.attrs, errors);
        let body = match &node.data {
            Data::Struct(data) => Body::Struct(Shape::from_syn(&data.fields, errors)),
            Data::Enum(data) => {
                if data.variants.is_empty() {
                    errors.push(syn::Error::new_spanned(
                        &node.ident,
                        "an enum without variants has no value to store; `#[derive(Event)]` needs at least one variant",
                    ));
                }
                let variants = data
                    .variants
                    .iter()
                    .map(|variant| {
                        attr::reject(&variant.attrs, "variant", errors);
                        Variant {
                            ident: &variant.ident,
                            shape: Shape::from_syn(&variant.fields, errors),
                        }
                    })
                    .collect();
                Body::Enum(variants)
            }
            Data::Union(data) => {
                errors.push(syn::Error::new_spanned(
                    data.union_token,
                    "`#[derive(Event)]` supports structs and enums, not unions",
                ));
                return None;
            }
        };
        Some(Input {
            ident: &node.ident,
            generics: &node.generics,
            attrs,
            body,
        })
    }
}

impl<'a> Shape<'a> {
    fn from_syn(fields: &'a Fields, errors: &mut Errors) -> Shape<'a> {
        let style = match fields {
            Fields::Named(_) => Style::Named,
            Fields::Unnamed(_) => Style::Tuple,
            Fields::Unit => Style::Unit,
        };
        let fields = fields
            .iter()
            .enumerate()
            .map(|(i, field)| {
                attr::reject(&field.attrs, "field", errors);
                Field {
                    member: match &field.ident {
                        Some(ident) => Member::Named(ident.clone()),
                        None => Member::Unnamed(i.into()),
                    },
                    ty: &field.ty,
                    rkyv: field
                        .attrs
                        .iter()
                        .filter(|a| a.path().is_ident("rkyv"))
                        .collect(),
                }
            })
            .collect();
        Shape { style, fields }
    }
}
