//! What every decoded batch must satisfy, shared by the fuzz targets.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use outpost_batch::{
    BatchBuilder, DecodedBatch, Dictionaries, Dictionary, Value, decode, read_header,
};

/// The dictionary of the seed corpus, so batches compressed with it get past the id check.
pub fn dictionaries() -> &'static Dictionaries {
    static SET: OnceLock<Dictionaries> = OnceLock::new();
    SET.get_or_init(|| {
        let bytes = include_bytes!("../dictionary.bin").to_vec();
        Dictionaries::from(Dictionary::from_bytes(bytes).expect("the committed dictionary loads"))
    })
}

type Series<'a> = BTreeMap<(&'a str, &'a str), Vec<(i64, Value)>>;

fn series(batch: &DecodedBatch) -> Series<'_> {
    let mut out = Series::new();
    for r in batch.readings() {
        out.entry((r.source, r.channel))
            .or_default()
            .push((r.ts_ms, r.value));
    }
    out
}

/// Decodes `data`; whatever decodes is self-consistent and seals again to the same series.
pub fn check(data: &[u8]) {
    let dicts = dictionaries();
    let header = read_header(data);
    let Ok(batch) = decode(data, dicts) else {
        return;
    };
    let h = batch.header();
    assert_eq!(
        header.as_ref().ok(),
        Some(h),
        "read_header agrees with decode"
    );
    assert_eq!(batch.readings().count(), h.reading_count as usize);
    assert_eq!(
        batch.to_json_lines().lines().count(),
        h.reading_count as usize
    );

    let mut again = BatchBuilder::new(h.gateway_id.clone(), h.seq);
    for r in batch.readings() {
        again
            .push(r.source, r.channel, r.ts_ms, r.value)
            .expect("a decoded reading is a valid push");
    }
    let dict = h.dictionary_id.and_then(|id| dicts.get(id));
    let sealed = again.seal(dict).expect("decoded readings seal");
    assert!(sealed.len() <= again.encoded_size_estimate());
    let back = decode(&sealed, dicts).expect("a sealed batch decodes");
    assert_eq!(series(&back), series(&batch));
    assert_eq!(
        (
            back.header().first_ts_ms,
            back.header().last_ts_ms,
            back.header().reading_count
        ),
        (h.first_ts_ms, h.last_ts_ms, h.reading_count)
    );
}
