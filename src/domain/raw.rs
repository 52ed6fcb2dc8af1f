//! The event's JSON read straight into the few shapes validation needs, without building a
//! `serde_json::Value`.
//!
//! Building the tree (a map per object, a `String` per key and per string) and freeing it was
//! more than half of [`super::SignupRequest::parse`], itself a sixth of the worker's
//! instructions at saturation (callgrind, docs/BENCHMARKS.md). Here strings borrow from the
//! body where they have no escapes, and everything the event does not use is skipped.
//!
//! What is accepted and refused is exactly what parsing into a `Value` gave, which a unit test
//! checks against the old code on generated bodies:
//! - everything goes through serde_json's `deserialize_any`, even skipped values, so numbers out
//!   of range, bad escapes, lone surrogates and nesting past 128 levels fail the same way
//!   (serde's `IgnoredAny` is not used: serde_json skips it without parsing numbers);
//! - a key given twice keeps its last value, as `serde_json::Map` does;
//! - `version` keeps whether it was an integer and its value where it fits an `i64`, which is
//!   what `Value::as_i64` answered.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One member's value, as far as validation needs to know it.
#[derive(Debug, Default)]
pub(super) enum Field<'a> {
    /// The key was not there.
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Bool(bool),
    /// An integer; `None` when it does not fit an `i64`.
    Int(Option<i64>),
    /// Anything else: a float, an array or an object.
    Other,
}

/// The `tenant` member.
#[derive(Debug, Default)]
pub(super) enum TenantField<'a> {
    #[default]
    Absent,
    Null,
    Object(Tenant<'a>),
    Other,
}

#[derive(Debug, Default)]
pub(super) struct Tenant<'a> {
    pub slug: Field<'a>,
    pub business_name: Field<'a>,
    pub owner_email: Field<'a>,
    pub tier: Field<'a>,
    pub is_demo: Field<'a>,
}

#[derive(Debug, Default)]
pub(super) struct Event<'a> {
    pub event_id: Field<'a>,
    pub kind: Field<'a>,
    pub version: Field<'a>,
    pub occurred_at: Field<'a>,
    pub tenant: TenantField<'a>,
}

/// The whole body: an object, or any other JSON value.
// Lives on the stack for one parse; boxing the event would cost the allocation this avoids.
#[allow(clippy::large_enum_variant)]
pub(super) enum Root<'a> {
    Object(Event<'a>),
    NotAnObject,
}

pub(super) fn parse(body: &[u8]) -> serde_json::Result<Root<'_>> {
    serde_json::from_slice(body)
}

/// Consumes any JSON value through `deserialize_any`, so that it is checked as strictly as a
/// `Value` would be (numbers parsed, strings decoded, depth counted).
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor).map(|()| Skip)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(())
    }
}

/// An object key, decoded (`"event\u005fid"` is `event_id`, as in a `Value`).
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Field<'de>, E> {
                Ok(Field::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Field<'de>, E> {
                Ok(Field::Int(Some(n)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Field<'de>, E> {
                Ok(Field::Int(i64::try_from(n).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Field<'de>, E> {
                Ok(Field::Other)
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
                SkipVisitor.visit_seq(seq).map(|()| Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
                SkipVisitor.visit_map(map).map(|()| Field::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A member that matters only when it is an object (`tenant`, and the body itself): one
/// visitor takes every other JSON value, and each type says what an object and the rest mean.
trait ObjectOr<'de>: Sized {
    /// `null`; only `tenant` tells it apart from other non-objects.
    fn null() -> Self;
    fn other() -> Self;
    fn object<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

struct ObjectOrVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: ObjectOr<'de>> Visitor<'de> for ObjectOrVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::object(map)
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::null())
    }
    fn visit_bool<E>(self, _: bool) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_i64<E>(self, _: i64) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_u64<E>(self, _: u64) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_f64<E>(self, _: f64) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_str<E>(self, _: &str) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        SkipVisitor.visit_seq(seq).map(|()| T::other())
    }
}

fn object_or<'de, D: Deserializer<'de>, T: ObjectOr<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(ObjectOrVisitor(std::marker::PhantomData))
}

impl<'de> ObjectOr<'de> for TenantField<'de> {
    fn null() -> Self {
        TenantField::Null
    }
    fn other() -> Self {
        TenantField::Other
    }
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut t = Tenant::default();
        while let Some(Key(key)) = map.next_key()? {
            let slot = match key.as_ref() {
                "slug" => &mut t.slug,
                "business_name" => &mut t.business_name,
                "owner_email" => &mut t.owner_email,
                "tier" => &mut t.tier,
                "is_demo" => &mut t.is_demo,
                _ => {
                    map.next_value::<Skip>()?;
                    continue;
                }
            };
            *slot = map.next_value()?;
        }
        Ok(TenantField::Object(t))
    }
}

impl<'de> ObjectOr<'de> for Root<'de> {
    fn null() -> Self {
        Root::NotAnObject
    }
    fn other() -> Self {
        Root::NotAnObject
    }
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut e = Event::default();
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "event_id" => e.event_id = map.next_value()?,
                "type" => e.kind = map.next_value()?,
                "version" => e.version = map.next_value()?,
                "occurred_at" => e.occurred_at = map.next_value()?,
                "tenant" => e.tenant = map.next_value()?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Root::Object(e))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for TenantField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object_or(d)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Root<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object_or(d)
    }
}
