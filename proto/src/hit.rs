//! `corridor.v1.SearchHit`, written by hand so that the gateway can forward a
//! node's hit without decoding it: a hit may hold its instrument as the bytes
//! of its encoding. On the wire it is the proto's `SearchHit` either way, and
//! decoding always yields the decoded instrument.

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{DecodeContext, WireType, bytes as wire_bytes, double, message, skip_field},
};

use crate::v1::{Instrument, NodeSearchHit};

/// Equality compares representations: a decoded hit and an encoded one with
/// the same bytes on the wire are not equal. Decoded hits compare as usual.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct SearchHit {
    /// The summary of the record: ids, names, city, category, maker and
    /// model, institution name, price, status and the booking-relevant
    /// flags. `GetInstrument` returns the whole record.
    pub instrument: Option<Instrument>,
    pub score: f64,
    /// An already encoded `Instrument`, sent in place of `instrument`.
    encoded: Option<Bytes>,
}

impl SearchHit {
    pub fn new(instrument: Instrument, score: f64) -> Self {
        SearchHit { instrument: Some(instrument), score, encoded: None }
    }

    /// A hit whose instrument is `encoded`, the bytes of an `Instrument`
    /// message, sent on as they are.
    pub fn encoded(encoded: Bytes, score: f64) -> Self {
        SearchHit { instrument: None, score, encoded: Some(encoded) }
    }
}

impl NodeSearchHit {
    /// Makes sure the hit names its instrument. A node of an earlier version
    /// answers with `SearchHit`s, which read as hits without an id (field 1
    /// is the same bytes either way); the id is then read from the instrument.
    pub fn fill_id(&mut self) {
        if self.id.is_empty()
            && let Ok(i) = Instrument::decode(self.instrument.clone())
        {
            self.id = i.id.into();
        }
    }

    /// The id as text; empty if a node sent bytes that are not UTF-8.
    pub fn id_str(&self) -> &str {
        std::str::from_utf8(&self.id).unwrap_or_default()
    }
}

impl Message for SearchHit {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.encoded, &self.instrument) {
            (Some(raw), _) => wire_bytes::encode(1, raw, buf),
            (None, Some(i)) => message::encode(1, i, buf),
            (None, None) => {}
        }
        if self.score != 0.0 {
            double::encode(2, &self.score, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                // A second field 1 merges into the first, encoded or not.
                if let Some(raw) = self.encoded.take() {
                    self.instrument = Some(Instrument::decode(raw)?);
                }
                message::merge(wire_type, self.instrument.get_or_insert_with(Default::default), buf, ctx)
            }
            2 => double::merge(wire_type, &mut self.score, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let instrument = match (&self.encoded, &self.instrument) {
            (Some(raw), _) => wire_bytes::encoded_len(1, raw),
            (None, Some(i)) => message::encoded_len(1, i),
            (None, None) => 0,
        };
        instrument + if self.score != 0.0 { double::encoded_len(2, &self.score) } else { 0 }
    }

    fn clear(&mut self) {
        *self = SearchHit::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instrument() -> Instrument {
        Instrument { id: "hefei/tem-1".into(), name_zh: "透射电镜".into(), ..Default::default() }
    }

    #[test]
    fn an_encoded_hit_is_the_same_bytes_as_a_decoded_one_and_decodes_to_it() {
        let plain = SearchHit::new(instrument(), 3.5);
        let raw = SearchHit::encoded(Bytes::from(instrument().encode_to_vec()), 3.5);
        assert_eq!(raw.encode_to_vec(), plain.encode_to_vec());
        assert_eq!(raw.encoded_len(), plain.encode_to_vec().len());
        assert_eq!(SearchHit::decode(raw.encode_to_vec().as_slice()).unwrap(), plain);
        // Merging into an encoded hit keeps what it held.
        let mut merged = raw.clone();
        let more = Instrument { name_en: "TEM".into(), ..Default::default() };
        merged.merge(SearchHit::new(more, 0.0).encode_to_vec().as_slice()).unwrap();
        let i = merged.instrument.unwrap();
        assert_eq!((i.id.as_str(), i.name_zh.as_str(), i.name_en.as_str()), ("hefei/tem-1", "透射电镜", "TEM"));
    }

    #[test]
    fn a_hit_from_a_node_of_the_previous_version_gets_its_id_from_the_instrument() {
        // The previous node answer carried `repeated SearchHit hits = 1`, as
        // SearchResponse still does.
        let old = crate::v1::SearchResponse { hits: vec![SearchHit::new(instrument(), 2.0)], ..Default::default() };
        let mut resp = crate::v1::NodeSearchResponse::decode(old.encode_to_vec().as_slice()).unwrap();
        let hit = &mut resp.hits[0];
        assert_eq!((hit.id_str(), hit.score), ("", 2.0));
        hit.fill_id();
        assert_eq!(hit.id_str(), "hefei/tem-1");
        assert_eq!(Instrument::decode(hit.instrument.clone()).unwrap(), instrument());
    }

    #[test]
    fn an_empty_hit_encodes_to_nothing_and_unknown_fields_are_skipped() {
        assert!(SearchHit::default().encode_to_vec().is_empty());
        // Field 9, varint 7: from a newer peer.
        let mut bytes = SearchHit::new(instrument(), 1.0).encode_to_vec();
        bytes.extend([9 << 3, 7]);
        assert_eq!(SearchHit::decode(bytes.as_slice()).unwrap(), SearchHit::new(instrument(), 1.0));
    }
}
