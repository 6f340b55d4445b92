//! `corridor.v1.SearchHit`, written by hand so that the gateway can forward a
//! node's hit without decoding it: a hit may hold its instrument as the bytes
//! of its encoding. On the wire it is the proto's `SearchHit` either way, and
//! decoding always yields the decoded instrument.

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{DecodeContext, WireType, bytes as wire_bytes, double, message, skip_field},
};

use crate::v1::Instrument;

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
                self.encoded = None;
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
