//! Value codecs for the process boundary.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How inputs, outputs and the worker value are encoded between the server
/// and a worker process.
///
/// * [`Codec::Postcard`] (default): compact and the fastest; not
///   self-describing, so it cannot decode types that need
///   `deserialize_any`, such as `serde_json::Value` or untagged enums.
/// * [`Codec::MessagePack`]: self-describing (works with
///   `serde_json::Value`), a little larger and slower.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// postcard (default).
    #[default]
    Postcard,
    /// MessagePack via `rmp-serde`.
    MessagePack,
}

impl Codec {
    /// Appends the encoding of `value` to `out` (a `Vec<u8>`, or the
    /// payload writer of a frame, which may put it in shared memory).
    pub fn encode_into<T: Serialize + ?Sized, W: std::io::Write>(
        self,
        out: &mut W,
        value: &T,
    ) -> Result<(), String> {
        match self {
            Codec::Postcard => postcard::to_io(value, out).map(drop).map_err(|e| match e {
                // postcard drops the message of a custom error; a second,
                // message-keeping pass (on this failure path only) recovers it.
                postcard::Error::SerdeSerCustom => {
                    match rmp_serde::encode::write(&mut std::io::sink(), value) {
                        Err(rmp_serde::encode::Error::Syntax(msg)) => msg,
                        _ => e.to_string(),
                    }
                }
                e => e.to_string(),
            }),
            Codec::MessagePack => rmp_serde::encode::write(out, value).map_err(|e| e.to_string()),
        }
    }

    /// Decodes a value.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Codec::Postcard => postcard::from_bytes(bytes).map_err(|e| {
                let hint = match e {
                    postcard::Error::WontImplement => {
                        " (postcard cannot decode self-describing types such as serde_json::Value; \
                         use `.codec(Codec::MessagePack)` on the ProcessServlet)"
                    }
                    postcard::Error::SerdeDeCustom => {
                        " (the type's Deserialize impl rejected the value; postcard keeps no \
                         message, `Codec::MessagePack` does)"
                    }
                    _ => "",
                };
                format!("{e}{hint}")
            }),
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_round_trip_typed_values() {
        for c in [Codec::Postcard, Codec::MessagePack] {
            let mut v = Vec::new();
            c.encode_into(&mut v, &(1u32, "x".to_string(), vec![1.5f64]))
                .unwrap();
            let back: (u32, String, Vec<f64>) = c.decode(&v).unwrap();
            assert_eq!(back, (1, "x".to_string(), vec![1.5]));
        }
    }

    #[test]
    fn postcard_explains_dynamic_values() {
        let mut v = Vec::new();
        let x = serde_json::json!({"a": [1, 2]});
        Codec::Postcard.encode_into(&mut v, &x).unwrap();
        let e = Codec::Postcard.decode::<serde_json::Value>(&v).unwrap_err();
        assert!(e.contains("MessagePack"), "{e}");
        let mut v = Vec::new();
        Codec::MessagePack.encode_into(&mut v, &x).unwrap();
        assert_eq!(
            Codec::MessagePack.decode::<serde_json::Value>(&v).unwrap(),
            x
        );
    }
}
