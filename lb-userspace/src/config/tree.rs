//! The pool file read once by serde-saphyr into a tree whose every node knows
//! its line, column, key and field path.
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{
    Budget, DuplicateKeyPolicy, Error, MergeKeyPolicy, MessageFormatter, NonFiniteFloatPolicy,
    Options, Spanned, UserMessageFormatter,
};

use super::{Pos, MAX_ALIAS_EVENTS, MAX_NODES};

/// A located YAML node. Aliases are expanded (a copy of the anchored node,
/// with the anchor's places and the alias's path).
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub pos: Pos,
    /// Where its key is (its own place for list items and the root).
    pub key: Pos,
    /// `vips[1].backends[0].address`; empty for the root.
    pub path: String,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub(super) enum Kind {
    /// `~`, `null` or nothing.
    Null,
    /// A scalar's text: a string's value, or a number's or boolean's source
    /// text (`1_009`, `0x50`, `true`). `int` when YAML read it as an integer
    /// (unquoted).
    Scalar {
        text: String,
        int: bool,
    },
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// For messages: what was found here.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing".to_owned(),
            Kind::Scalar { text, .. } => format!("`{text}`"),
            Kind::List(_) => "a list".to_owned(),
            Kind::Map(_) => "a mapping".to_owned(),
        }
    }

    /// The node at `path` below this one (`vips[0].health_check`); the first
    /// of repeated keys, as everywhere.
    pub fn find(&self, path: &str) -> Option<&Node> {
        let mut node = self;
        for segment in path.split('.').filter(|s| !s.is_empty()) {
            let mut parts = segment.split('[');
            let name = parts.next()?;
            let Kind::Map(entries) = &node.kind else {
                return None;
            };
            node = &entries.iter().find(|(k, _)| k.text() == Some(name))?.1;
            for index in parts {
                let Kind::List(items) = &node.kind else {
                    return None;
                };
                node = items.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
            }
        }
        Some(node)
    }

    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Gives every node below its path and key place.
    fn place(&mut self, path: String, key: Pos) {
        self.key = key;
        match &mut self.kind {
            Kind::List(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let pos = item.pos;
                    item.place(format!("{path}[{i}]"), pos);
                }
            }
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let child = match k.text() {
                        Some(name) if path.is_empty() => name.to_owned(),
                        Some(name) => format!("{path}.{name}"),
                        None => path.clone(),
                    };
                    let pos = k.pos;
                    k.path.clone_from(&child);
                    v.place(child, pos);
                }
            }
            _ => {}
        }
        self.path = path;
    }
}

/// Parses the text; `None` for a file with no document (or only `~`), an
/// error with its place for text that is not YAML or is too big.
pub(super) fn read(text: &str) -> Result<Option<Node>, (Pos, String)> {
    let mut budget = Budget::default();
    budget.max_nodes = MAX_NODES;
    budget.max_events = 4 * MAX_NODES;
    // Events kept for replaying anchors: plenty for real files, and stops
    // an alias bomb early.
    budget.max_recorded_anchor_events = MAX_ALIAS_EVENTS / 4;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    options.strict_booleans = true;
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.merge_keys = MergeKeyPolicy::AsOrdinary;
    options.non_finite_float_policy = NonFiniteFloatPolicy::AsString;
    options.with_snippet = false;
    match serde_saphyr::from_str_with_options::<Option<Spanned<Raw>>>(text, options) {
        Ok(None) => Ok(None),
        Ok(Some(raw)) => {
            let mut root = node(raw, text);
            if matches!(root.kind, Kind::Null) {
                return Ok(None);
            }
            root.place(String::new(), root.pos);
            Ok(Some(root))
        }
        Err(e) => Err(syntax_problem(&e, text)),
    }
}

fn syntax_problem(e: &Error, text: &str) -> (Pos, String) {
    let pos = e.location().map_or(Pos::START, |l| Pos {
        line: l.line() as usize,
        column: l.column() as usize,
    });
    let mut original = e;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = original {
        original = error;
    }
    let what = UserMessageFormatter.format_message(original);
    let message = match original {
        Error::MultipleDocuments { .. } => {
            // Point at the `---` that starts the second document.
            let lines = text.lines().take(pos.line.saturating_sub(1)).enumerate();
            let second = lines.skip(1).filter(|(_, l)| l.starts_with("---")).last();
            let line = second.map_or(pos.line, |(i, _)| i + 1);
            let message = "the file holds more than one YAML document (a second `---`); a pool \
                           file is one document";
            return (Pos { line, column: 1 }, message.to_owned());
        }
        Error::Budget { .. }
        | Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. } => format!(
            "the file is too large or expands to too much through aliases ({what}); a pool file \
             is far smaller"
        ),
        _ => format!("this is not valid YAML: {what}; check the indentation and quoting here"),
    };
    (pos, message)
}

/// What serde-saphyr gives for a node, before it is placed.
enum Raw {
    Null,
    Str(String),
    /// A number or boolean (`int` for integers); its text is taken from the
    /// source.
    Typed(bool),
    List(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

fn node(raw: Spanned<Raw>, source: &str) -> Node {
    // An alias's node is the anchored one: its place is where it was defined.
    let at = raw.defined;
    let pos = Pos {
        line: at.line() as usize,
        column: at.column() as usize,
    };
    let kind = match raw.value {
        Raw::Null => Kind::Null,
        Raw::Str(text) => Kind::Scalar { text, int: false },
        Raw::Typed(int) => {
            let (start, len) = (at.span().byte_offset(), at.span().byte_len());
            let text = start
                .zip(len)
                .and_then(|(s, l)| source.get(s as usize..(s + l) as usize));
            let text = text.unwrap_or_default().to_owned();
            Kind::Scalar { text, int }
        }
        Raw::List(items) => Kind::List(items.into_iter().map(|i| node(i, source)).collect()),
        Raw::Map(entries) => {
            let entries = entries.into_iter();
            Kind::Map(
                entries
                    .map(|(k, v)| (node(k, source), node(v, source)))
                    .collect(),
            )
        }
    };
    let path = String::new();
    Node {
        pos,
        key: pos,
        path,
        kind,
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

macro_rules! typed {
    ($($method:ident: $ty:ty => $int:expr),*) => {$(
        fn $method<E>(self, _: $ty) -> Result<Raw, E> {
            Ok(Raw::Typed($int))
        }
    )*};
}

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    typed!(visit_bool: bool => false, visit_f64: f64 => false,
           visit_i64: i64 => true, visit_u64: u64 => true,
           visit_i128: i128 => true, visit_u128: u128 => true);

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Raw::Map(entries))
    }
}
