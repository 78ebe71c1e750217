//! A serde `Deserializer` over the located tree that records every problem
//! where it is found and keeps going.
//!
//! Serde stops at the first error. Here each value is read into a [`Field`],
//! which keeps the error inside: the problem is recorded in the [`Sink`]
//! with its place, the field becomes [`Field::Invalid`], and the struct
//! around it carries on. Unknown and repeated fields are reported (all of
//! them) and skipped, as `deny_unknown_fields` would reject them.
use std::cell::{Cell, RefCell};
use std::fmt::{self, Display};
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer, Expected, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, Visitor,
};
use serde::{forward_to_deserialize_any, Deserialize};

use super::tree::{Kind, Node};
use super::{ConfigError, ConfigErrors, Pool, Pos};

/// Stands for the field's name in messages (`weight`, `health-check port`).
pub(super) const FIELD: &str = "{field}";

/// The problems found so far.
#[derive(Default)]
pub(super) struct Sink(RefCell<Vec<ConfigError>>);

impl Sink {
    pub fn report(&self, pos: Pos, path: &str, message: impl Into<String>) {
        self.0.borrow_mut().push(ConfigError {
            line: pos.line,
            column: pos.column,
            path: path.to_owned(),
            message: message.into().replace(FIELD, &label(path)),
        });
    }

    /// The pool, or every problem sorted by place (the same problem found
    /// twice, through health-check layering, is listed once).
    pub fn finish(self, source_name: &str, pool: Option<Pool>) -> Result<Pool, ConfigErrors> {
        let mut errors = self.0.into_inner();
        match pool {
            Some(pool) if errors.is_empty() => return Ok(pool),
            None if errors.is_empty() => errors.push(ConfigError {
                line: 1,
                column: 1,
                path: String::new(),
                message: "internal error: the pool could not be built although no problem was \
                          found; please report this with the file"
                    .to_owned(),
            }),
            _ => {}
        }
        errors.sort_by(|a, b| {
            (a.line, a.column, &a.path, &a.message).cmp(&(b.line, b.column, &b.path, &b.message))
        });
        errors.dedup();
        Err(ConfigErrors {
            source_name: source_name.to_owned(),
            errors,
        })
    }
}

/// The name of the field at `path`, for messages.
fn label(path: &str) -> String {
    let mut segments = path.rsplit('.');
    let last = segments.next().unwrap_or_default();
    let last = last.split('[').next().unwrap_or_default();
    match segments.next() {
        Some(parent) if parent.starts_with("health") => format!("health-check {last}"),
        _ => last.to_owned(),
    }
}

/// A value as written.
#[derive(Clone, Debug, Default)]
pub(super) enum Field<T> {
    /// Not in the file.
    #[default]
    Absent,
    /// Given as `~`, `null` or nothing: not given, but the key is there.
    Null(At<()>),
    /// Given but invalid; already reported.
    Invalid,
    Valid(At<T>),
}

/// A value and where it was written: its path, which the tree knows the
/// line and column of.
#[derive(Clone, Debug)]
pub(super) struct At<T> {
    pub value: T,
    pub path: String,
}

impl<T> Field<T> {
    /// The value, if given and valid.
    pub fn get(&self) -> Option<&At<T>> {
        match self {
            Field::Valid(at) => Some(at),
            _ => None,
        }
    }

    /// The value, or `default` when not given; `None` when invalid.
    pub fn known_or(&self, default: T) -> Option<T>
    where
        T: Clone,
    {
        match self {
            Field::Absent | Field::Null(_) => Some(default),
            Field::Invalid => None,
            Field::Valid(at) => Some(at.value.clone()),
        }
    }

    /// The value, or `default` when not given or invalid (for building only:
    /// an invalid value has been reported, so the pool is not returned).
    pub fn or(&self, default: T) -> T
    where
        T: Clone,
    {
        self.known_or(default.clone()).unwrap_or(default)
    }

    /// Whether a value (valid or not) was given.
    pub fn given(&self) -> bool {
        matches!(self, Field::Invalid | Field::Valid(_))
    }

    pub fn invalid(&self) -> bool {
        matches!(self, Field::Invalid)
    }
}

/// The newtype name by which [`Field`] asks [`De`] for the place of a value.
const AT: &str = "lb::config::At";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(AT, FieldVisitor(PhantomData))
    }
}

struct FieldVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for FieldVisitor<T> {
    type Value = Field<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value in a pool file")
    }

    /// [`De`] gives the path, then the value unless it is null.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<T>, A::Error> {
        let path: String = seq.next_element()?.unwrap_or_default();
        Ok(match seq.next_element::<T>() {
            Ok(Some(value)) => Field::Valid(At { value, path }),
            Ok(None) => Field::Null(At { value: (), path }),
            // De has recorded the problem where it found it.
            Err(_) => Field::Invalid,
        })
    }
}

/// Errors inside the deserializer; every one that leaves [`De`] has been
/// recorded.
#[derive(Debug)]
pub(super) enum Error {
    Recorded,
    Message(String),
}

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Recorded => f.write_str("recorded"),
            Error::Message(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<M: Display>(message: M) -> Self {
        Error::Message(message.to_string())
    }

    fn invalid_type(found: Unexpected, expected: &dyn Expected) -> Self {
        let found = match found {
            Unexpected::Str(s) => format!("`{s}`"),
            Unexpected::Seq => "a list".to_owned(),
            Unexpected::Unit => "nothing".to_owned(),
            other => other.to_string(),
        };
        Error::Message(format!("expected {expected}, found {found}"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let choice = match expected {
            [one] => format!("only `{one}` is supported for now"),
            _ => format!("expected one of {}", quoted(expected, ", ")),
        };
        Error::Message(format!("`{variant}` is not a valid {FIELD}; {choice}"))
    }
}

fn quoted(names: &[&str], sep: &str) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    names.join(sep)
}

/// A deserializer for one node.
#[derive(Clone, Copy)]
pub(super) struct De<'a> {
    pub node: &'a Node,
    pub sink: &'a Sink,
}

impl<'a> De<'a> {
    fn fail<T>(self, message: impl Into<String>) -> Result<T, Error> {
        self.sink.report(self.node.pos, &self.node.path, message);
        Err(Error::Recorded)
    }

    /// Records a problem found in this node's value (by a visitor, or by a
    /// conversion such as `#[serde(try_from)]` after it).
    fn check<T>(self, result: Result<T, Error>) -> Result<T, Error> {
        match result {
            Err(Error::Message(m)) => self.fail(m),
            other => other,
        }
    }

    /// An unquoted decimal integer (`_` separators allowed); the visitor
    /// checks the range.
    fn integer<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let expected = format!("expected {FIELD}, {}", &visitor as &dyn Expected);
        let Kind::Scalar { text, int } = &self.node.kind else {
            return self.fail(format!("{expected}, found {}", self.node.describe()));
        };
        let digits = text.trim_start_matches(['+', '-']).replace('_', "");
        let decimal = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        if !decimal || !int {
            let hint = if decimal {
                " (write it without quotes)"
            } else {
                ""
            };
            return self.fail(format!("{expected}, found `{text}`{hint}"));
        }
        let magnitude = digits.parse::<i128>().unwrap_or(i128::MAX);
        let n = if text.starts_with('-') {
            -magnitude
        } else {
            magnitude
        };
        let result = match (u64::try_from(n), i64::try_from(n)) {
            (Ok(u), _) => visitor.visit_u64(u),
            (_, Ok(i)) => visitor.visit_i64(i),
            _ => return self.fail(format!("{FIELD} `{text}` is out of range")),
        };
        self.check(result)
    }
}

macro_rules! integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.integer(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for De<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.kind {
            Kind::Null => visitor.visit_unit(),
            Kind::Scalar { text, .. } => visitor.visit_str(text),
            Kind::List(items) => visitor.visit_seq(Items::new(self, items)),
            Kind::Map(_) => {
                let expected = &visitor as &dyn Expected;
                return self.fail(format!("expected {expected}, found a mapping"));
            }
        };
        self.check(result)
    }

    integers!(deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
              deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64);

    /// `true` or `false`, unquoted (YAML 1.2: `yes` is a string).
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.kind {
            Kind::Scalar { text, int: false } if text == "true" => visitor.visit_bool(true),
            Kind::Scalar { text, int: false } if text == "false" => visitor.visit_bool(false),
            Kind::Scalar { text, .. } => {
                return self.fail(format!("expected true or false, found `{text}`"))
            }
            _ => {
                return self.fail(format!(
                    "expected true or false, found {}",
                    self.node.describe()
                ))
            }
        };
        self.check(result)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == AT {
            return visitor.visit_seq(Place { de: self, step: 0 });
        }
        self.check(visitor.visit_newtype_struct(self))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::List(items) => self.check(visitor.visit_seq(Items::new(self, items))),
            _ => self.fail(format!(
                "expected a list of {FIELD} (`[a, b]`, or one `- a` line each), found {}",
                self.node.describe()
            )),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Kind::Map(entries) = &self.node.kind else {
            return self.fail(format!(
                "expected {name} (a mapping of fields), found {}",
                self.node.describe()
            ));
        };
        let access = Entries {
            de: self,
            entries: entries.iter(),
            name,
            fields,
            seen: Vec::new(),
            value: None,
        };
        self.check(visitor.visit_map(access))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar { text, .. } => {
                self.check(visitor.visit_enum(text.as_str().into_deserializer()))
            }
            _ => self.fail(format!(
                "expected {FIELD} ({}), found {}",
                quoted(variants, " | "),
                self.node.describe()
            )),
        }
    }

    forward_to_deserialize_any! {
        f32 f64 char str string bytes byte_buf option unit unit_struct tuple
        tuple_struct map identifier ignored_any i128 u128
    }
}

/// The path of a value, then the value: what [`FieldVisitor`] reads.
struct Place<'a> {
    de: De<'a>,
    step: u8,
}

impl<'de> SeqAccess<'de> for Place<'_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let node = self.de.node;
        self.step += 1;
        match self.step {
            1 => seed
                .deserialize(node.path.as_str().into_deserializer())
                .map(Some),
            2 if !matches!(node.kind, Kind::Null) => {
                self.de.check(seed.deserialize(self.de)).map(Some)
            }
            _ => Ok(None),
        }
    }
}

struct Items<'a> {
    de: De<'a>,
    items: std::slice::Iter<'a, Node>,
}

impl<'a> Items<'a> {
    fn new(de: De<'a>, items: &'a [Node]) -> Self {
        Items {
            de,
            items: items.iter(),
        }
    }
}

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        match self.items.next() {
            Some(node) => {
                let de = De { node, ..self.de };
                de.check(seed.deserialize(de)).map(Some)
            }
            None => Ok(None),
        }
    }
}

/// The fields of a struct: each known field once, in file order.
struct Entries<'a> {
    de: De<'a>,
    entries: std::slice::Iter<'a, (Node, Node)>,
    /// The struct, for messages (its serde name: "a VIP").
    name: &'static str,
    fields: &'static [&'static str],
    /// Fields seen, with the line of their first key.
    seen: Vec<(&'a str, usize)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let sink = self.de.sink;
        for (key, value) in self.entries.by_ref() {
            let Some(name) = key.text() else {
                let found = key.describe();
                sink.report(
                    key.pos,
                    &key.path,
                    format!("expected a field name, found {found}"),
                );
                continue;
            };
            if !self.fields.contains(&name) {
                let message = unknown_field(name, self.name, self.fields);
                sink.report(key.pos, &key.path, message);
                continue;
            }
            if let Some((_, first)) = self.seen.iter().find(|(n, _)| *n == name) {
                let message = format!(
                    "`{name}` is given twice in {} (first at line {first}); keep one",
                    self.name
                );
                sink.report(key.pos, &key.path, message);
                continue;
            }
            self.seen.push((name, key.pos.line));
            self.value = Some(value);
            return seed.deserialize(name.into_deserializer()).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let node = self.value.take().ok_or(Error::Recorded)?;
        let de = De { node, ..self.de };
        de.check(seed.deserialize(de))
    }
}

fn unknown_field(name: &str, what: &str, fields: &[&str]) -> String {
    let suggestion = fields
        .iter()
        .map(|f| (edit_distance(name, f), *f))
        .filter(|(d, f)| *d <= 2 && *d < f.len())
        .min();
    let list = quoted(fields, ", ");
    match suggestion {
        Some((_, f)) => format!("unknown field `{name}` in {what}; did you mean `{f}`?"),
        None if name == "<<" => format!(
            "merge keys (`<<`) are not supported; write the fields out (the fields of {what} \
             are {list})"
        ),
        None => format!("unknown field `{name}` in {what}; the fields are {list}"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The field names of a struct (what its `deserialize_struct` is told).
pub(super) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'c>(&'c Cell<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::Recorded)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0.set(fields);
            Err(Error::Recorded)
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let fields = Cell::new(&[][..]);
    let _ = T::deserialize(Probe(&fields));
    fields.get()
}
