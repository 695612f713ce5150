//! A map's wire form: its entries (nested or standalone) and the standalone map with
//! its context and removal notes, in JSON and binary (see [`crate::wire`]).

use super::*;

/// The wire form of a map's entries, in key order: a JSON object when every key is a
/// JSON object key (a string or an integer), an array of `[key, value]` pairs
/// otherwise (see [`Key`]).
pub struct EncodedEntries<'a, K, V: DotStore + 'a> {
    entries: Vec<(&'a K, V::Encoded<'a>)>,
    object: bool,
}

impl<K: Serialize, V: DotStore> Serialize for EncodedEntries<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The binary form has a single one: a count, then keys and values in turn.
        if self.object || !s.is_human_readable() {
            let mut map = s.serialize_map(Some(self.entries.len()))?;
            for (k, v) in &self.entries {
                map.serialize_entry(k, v)?;
            }
            map.end()
        } else {
            let mut seq = s.serialize_seq(Some(self.entries.len()))?;
            for (k, v) in &self.entries {
                seq.serialize_element(&(k, v))?;
            }
            seq.end()
        }
    }
}

impl<K: Key, V: DotStore> OrMap<K, V> {
    pub(super) fn encode_entries<'a>(
        &'a self,
        table: &mut ReplicaTable,
    ) -> EncodedEntries<'a, K, V> {
        let mut sorted: Vec<(&K, &V)> = self.entries.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let object = sorted.iter().all(|(k, _)| crate::probe::is_object_key(*k));
        EncodedEntries {
            entries: sorted
                .into_iter()
                .map(|(k, v)| (k, v.encode(table)))
                .collect(),
            object,
        }
    }

    pub(super) fn decode_entries(
        decoded: DecodedEntries<K, V::Decoded>,
        replicas: &[ReplicaId],
    ) -> Result<Entries<K, V>> {
        let mut entries = Entries::with_capacity_and_hasher(decoded.0.len(), Default::default());
        for (k, v) in decoded.0 {
            entries.insert(k, V::decode(v, replicas)?);
        }
        Ok(entries)
    }
}

/// A standalone map on the wire. `x`, its removal notes (`[[replica index,
/// counter], key, context]` each), is empty in messages to peers that speak a
/// protocol version below 3 (older builds ignore the field), and left out of JSON when
/// empty; the binary form, whose fields have no names, always writes it.
pub(super) struct WireMap<'a, K, V: DotStore + 'a> {
    r: Vec<ReplicaId>,
    c: EncodedContext,
    e: EncodedEntries<'a, K, V>,
    x: Vec<((u32, u64), &'a K, EncodedContext)>,
}

impl<K: Serialize, V: DotStore> Serialize for WireMap<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let with_notes = !self.x.is_empty() || !s.is_human_readable();
        let mut w = s.serialize_struct("WireMap", if with_notes { 4 } else { 3 })?;
        w.serialize_field("r", &self.r)?;
        w.serialize_field("c", &self.c)?;
        w.serialize_field("e", &self.e)?;
        if with_notes {
            w.serialize_field("x", &self.x)?;
        } else {
            w.skip_field("x")?;
        }
        w.end()
    }
}

#[derive(Deserialize)]
#[serde(bound = "K: Key, V: DotStore")]
pub(super) struct WireMapOwned<K, V: DotStore> {
    #[serde(deserialize_with = "crate::wire::budget::replicas")]
    r: Vec<ReplicaId>,
    c: DecodedContext,
    e: DecodedEntries<K, V::Decoded>,
    #[serde(default)]
    x: DecodedNotes<K>,
}

/// Removal notes as read from the wire, each charged to the decoding budget as one
/// entry (their contexts' ranges as ranges) while it is read.
pub(super) struct DecodedNotes<K>(Vec<((u32, u64), K, DecodedContext)>);

impl<K> Default for DecodedNotes<K> {
    fn default() -> Self {
        DecodedNotes(Vec::new())
    }
}

impl<'de, K: Key> Deserialize<'de> for DecodedNotes<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct NotesVisitor<K>(std::marker::PhantomData<K>);
        impl<'de, K: Key> serde::de::Visitor<'de> for NotesVisitor<K> {
            type Value = DecodedNotes<K>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of removal notes")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(note) = access.next_element()? {
                    crate::wire::budget::entry().map_err(serde::de::Error::custom)?;
                    out.push(note);
                }
                Ok(DecodedNotes(out))
            }
        }
        d.deserialize_seq(NotesVisitor(std::marker::PhantomData))
    }
}

/// A map's entries as read from the wire, before validation: either form (a JSON
/// object, or an array of `[key, value]` pairs), and a key that appears twice in
/// either is a decoding error (two decoders could otherwise read one message
/// differently). Each key is charged to the decoding budget as one entry as it is
/// read (see [`DecodedElements`](crate::causal::DecodedElements)).
#[derive(Debug)]
pub struct DecodedEntries<K, V>(Entries<K, V>);

impl<'de, K: Key, V: Deserialize<'de>> Deserialize<'de> for DecodedEntries<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Unique<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Key, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<K, V> {
            type Value = Entries<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map's entries (an object, or [key, value] pairs), each key once")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Entries::with_capacity_and_hasher(
                    crate::wire::budget::reserve(access.size_hint()),
                    Default::default(),
                );
                while let Some(k) = access.next_key()? {
                    crate::wire::budget::entry().map_err(crate::wire::budget::custom)?;
                    let v = access.next_value()?;
                    if out.insert(k, v).is_some() {
                        return Err(crate::wire::budget::custom("a map key appears twice"));
                    }
                }
                Ok(out)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Entries::with_capacity_and_hasher(
                    crate::wire::budget::reserve(access.size_hint()),
                    Default::default(),
                );
                while let Some((k, v)) = access.next_element::<(K, V)>()? {
                    crate::wire::budget::entry().map_err(crate::wire::budget::custom)?;
                    if out.insert(k, v).is_some() {
                        return Err(crate::wire::budget::custom("a map key appears twice"));
                    }
                }
                Ok(out)
            }
        }
        if !d.is_human_readable() {
            return d
                .deserialize_map(Unique(std::marker::PhantomData))
                .map(DecodedEntries);
        }
        d.deserialize_any(Unique(std::marker::PhantomData))
            .map(DecodedEntries)
    }
}

impl<K: Key, V: DotStore> Serialize for OrMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut table = ReplicaTable::default();
        let c = encode_context(&self.ctx, &mut table);
        let e = self.encode_entries(&mut table);
        let x = if crate::wire::encoding_version() >= 3 {
            // In dot order: replicas holding the same notes encode them alike.
            let mut notes: Vec<&RemovalNote<K>> = self.notes.list.iter().collect();
            notes.sort_unstable_by_key(|n| n.dot);
            notes
                .into_iter()
                .map(|n| {
                    (
                        table.dot(n.dot),
                        &n.key,
                        encode_context(&n.seen, &mut table),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        WireMap {
            r: table.into_ids(),
            c,
            e,
            x,
        }
        .serialize(s)
    }
}

impl<'de, K: Key, V: DotStore> Deserialize<'de> for OrMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = WireMapOwned::<K, V>::deserialize(d)?;
        crate::causal::check_table(&raw.r).map_err(crate::wire::budget::custom)?;
        let ctx = raw.c.resolve(&raw.r).map_err(crate::wire::budget::custom)?;
        let entries = Self::decode_entries(raw.e, &raw.r).map_err(crate::wire::budget::custom)?;
        let mut map = OrMap {
            entries,
            ctx,
            ..OrMap::default()
        };
        map.seal();
        for ((idx, counter), key, seen) in raw.x.0 {
            let dot = crate::causal::decode_dot(&raw.r, idx, counter)
                .map_err(crate::wire::budget::custom)?;
            let seen = seen.resolve(&raw.r).map_err(crate::wire::budget::custom)?;
            map.notes.push_received(RemovalNote {
                dot,
                key,
                seen,
                seq: 0,
            });
        }
        Ok(map)
    }
}
