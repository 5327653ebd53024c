//! Fuzzes the frame decoder: whatever bytes a (broken or hostile) peer
//! sends, `FrameReader` and the body parsers return frames or errors; they
//! never panic, never read out of bounds, and never allocate more than the
//! frame limit (a lying length or count is rejected before allocating).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpserver::ipc::frame::{kind, parse_cancel, parse_items, parse_results};
use mpserver::ipc::reader::FrameReader;

/// A small limit, so that "oversized" is reachable by the fuzzer.
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The body parsers on the raw input (as a frame body).
    let _ = parse_items(data);
    let _ = parse_results(data);
    let _ = parse_cancel(data);

    // The stream reader: frames until the end or the first error, each body
    // given to the parser of its kind. Several frames may share one input.
    let mut reader = FrameReader::new(data, MAX_FRAME);
    let mut frames = 0usize;
    while let Ok(Some((k, body))) = reader.read_frame() {
        frames += 1;
        assert!(
            body.len() < MAX_FRAME,
            "a frame beyond the limit was accepted"
        );
        match k {
            kind::ITEMS => {
                if let Ok((_, items)) = parse_items(body) {
                    for (_, payload) in items {
                        assert!(payload.len() <= body.len());
                    }
                }
            }
            kind::RESULTS => {
                if let Ok(results) = parse_results(body) {
                    for (_, status, _, payload) in results {
                        assert!(status <= mpserver::ipc::frame::STATUS_SKIPPED);
                        assert!(payload.len() <= body.len());
                    }
                }
            }
            kind::CANCEL => {
                if let Ok(ids) = parse_cancel(body) {
                    assert!(ids.len() * 8 <= body.len());
                }
            }
            _ => {}
        }
        // Each frame consumes at least 5 bytes.
        assert!(frames * 5 <= data.len());
    }
});
