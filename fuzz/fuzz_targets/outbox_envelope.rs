//! Arbitrary header fields into the CloudEvents envelope reader: it may
//! refuse them but never panic, and an envelope it accepts must write out
//! to headers that read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_outbox::Envelope;

fuzz_target!(|fields: Vec<(String, String)>| {
    let Ok(envelope) = Envelope::from_headers(fields.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    else {
        return;
    };
    let written = envelope.to_headers();
    let again = Envelope::from_headers(written.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .expect("its own headers read back");
    assert_eq!(again, envelope);
});
