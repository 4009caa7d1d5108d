//! Topic patterns: an exact topic, or a prefix written with a trailing `*` (docs/protocol.md
//! section 7), and a map from patterns to values that finds every match of a topic.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// A subscription or NOTIFY-route pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Pattern {
    /// Matches this topic only.
    Exact(Box<str>),
    /// Matches every topic starting with this prefix (the pattern without its `*`; may be
    /// empty, for a lone `*`).
    Prefix(Box<str>),
}

/// Why a pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatternError {
    Empty,
    TooLong,
    NotUtf8,
}

impl PatternError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PatternError::Empty => "topic must not be empty",
            PatternError::TooLong => "topic is longer than 255 bytes",
            PatternError::NotUtf8 => "topic is not valid UTF-8",
        }
    }
}

impl Pattern {
    /// Reads a pattern from a `$subscribe` body or a route: 1..=255 bytes of UTF-8. Only a
    /// trailing `*` is special; a `*` anywhere else is an ordinary character.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, PatternError> {
        match bytes.len() {
            0 => return Err(PatternError::Empty),
            1..=255 => {}
            _ => return Err(PatternError::TooLong),
        }
        let text = std::str::from_utf8(bytes).map_err(|_| PatternError::NotUtf8)?;
        Ok(match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.into()),
            None => Pattern::Exact(text.into()),
        })
    }

    /// Whether `topic` matches.
    #[cfg(test)]
    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => **t == *topic,
            Pattern::Prefix(p) => topic.starts_with(&**p),
        }
    }
}

/// Values keyed by pattern, looked up by topic.
///
/// A lookup costs one hash probe for the exact topic plus one per character boundary of the
/// topic (at most 256, topics being at most 255 bytes), whatever the number of patterns:
/// instead of testing every prefix pattern against the topic, each prefix of the topic is
/// looked up.
#[derive(Debug, Clone)]
pub(crate) struct PatternMap<V> {
    exact: HashMap<Box<str>, V>,
    prefix: HashMap<Box<str>, V>,
}

impl<V> Default for PatternMap<V> {
    fn default() -> Self {
        PatternMap {
            exact: HashMap::new(),
            prefix: HashMap::new(),
        }
    }
}

impl<V> PatternMap<V> {
    fn side<'s, 'p>(&'s mut self, pattern: &'p Pattern) -> (&'s mut HashMap<Box<str>, V>, &'p str) {
        match pattern {
            Pattern::Exact(t) => (&mut self.exact, t),
            Pattern::Prefix(p) => (&mut self.prefix, p),
        }
    }

    /// The entry for `pattern`.
    pub(crate) fn entry(&mut self, pattern: &Pattern) -> Entry<'_, Box<str>, V> {
        let (map, key) = self.side(pattern);
        map.entry(key.into())
    }

    /// The value for `pattern` itself (not a lookup by topic).
    pub(crate) fn get_mut(&mut self, pattern: &Pattern) -> Option<&mut V> {
        let (map, key) = self.side(pattern);
        map.get_mut(key)
    }

    /// Removes `pattern`'s value.
    pub(crate) fn remove(&mut self, pattern: &Pattern) -> Option<V> {
        let (map, key) = self.side(pattern);
        map.remove(key)
    }

    /// Every value whose pattern matches `topic`: the exact one first, then the prefixes
    /// from the longest to the shortest.
    pub(crate) fn matches<'s>(&'s self, topic: &str) -> impl Iterator<Item = &'s V> {
        let exact = self.exact.get(topic);
        let prefixes = (!self.prefix.is_empty())
            .then(|| {
                (0..=topic.len())
                    .rev()
                    .filter(|&i| topic.is_char_boundary(i))
                    .filter_map(|i| self.prefix.get(&topic[..i]))
            })
            .into_iter()
            .flatten();
        exact.into_iter().chain(prefixes)
    }

    /// The best match for `topic`: exact, else the longest prefix.
    pub(crate) fn best<'s>(&'s self, topic: &str) -> Option<&'s V> {
        self.matches(topic).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let exact = Pattern::parse(b"orders.created").unwrap();
        assert_eq!(exact, Pattern::Exact("orders.created".into()));
        assert!(exact.matches("orders.created"));
        assert!(!exact.matches("orders.created.eu"));

        let prefix = Pattern::parse(b"orders.*").unwrap();
        assert_eq!(prefix, Pattern::Prefix("orders.".into()));
        assert!(prefix.matches("orders.created"));
        assert!(prefix.matches("orders."));
        assert!(!prefix.matches("orders"));

        // Only a trailing star is special.
        let star_inside = Pattern::parse(b"a*b").unwrap();
        assert!(star_inside.matches("a*b"));
        assert!(!star_inside.matches("axb"));

        assert!(Pattern::parse(b"*").unwrap().matches("anything"));
        assert_eq!(Pattern::parse(b""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse(&[b'a'; 256]), Err(PatternError::TooLong));
        assert!(Pattern::parse(&[b'a'; 255]).is_ok());
        assert_eq!(Pattern::parse(&[0xff]), Err(PatternError::NotUtf8));
    }

    #[test]
    fn map_finds_every_match_once_longest_first() {
        let mut map = PatternMap::default();
        for (i, p) in [
            "orders.created",
            "orders.*",
            "o*",
            "*",
            "users.*",
            "orders.created.*",
        ]
        .iter()
        .enumerate()
        {
            map.entry(&Pattern::parse(p.as_bytes()).unwrap())
                .or_insert(i);
        }
        let found: Vec<usize> = map.matches("orders.created").copied().collect();
        assert_eq!(found, vec![0, 1, 2, 3]);
        assert_eq!(map.best("orders.created"), Some(&0));
        assert_eq!(map.best("orders.deleted"), Some(&1));
        assert_eq!(map.best("users.x"), Some(&4));
        assert_eq!(map.best("zzz"), Some(&3));
        map.remove(&Pattern::parse(b"*").unwrap());
        assert_eq!(map.best("zzz"), None);
    }

    #[test]
    fn multibyte_topics_are_split_only_on_char_boundaries() {
        let mut map = PatternMap::default();
        map.entry(&Pattern::parse("é*".as_bytes()).unwrap())
            .or_insert(1);
        assert_eq!(map.best("été"), Some(&1));
        assert_eq!(map.best("e"), None);
    }
}
