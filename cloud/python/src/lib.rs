//! `outpost_batch` for Python: Outpost's batch decoder (the `outpost-batch` crate, the same code
//! the cloud's ingest runs) behind a small Python API. Decoding releases the GIL.
//!
//! - `read_header(data) -> dict`
//! - `decode(data, dictionaries=None) -> Batch`; `Batch.header`, `Batch.rows()`,
//!   `Batch.to_arrow()`, `Batch.to_json_lines()`, `len(batch)`
//! - `DecodeError(ValueError)`: a batch that is not valid, with the decoder's own message.

// PyO3's macros expand to unsafe FFI glue; this crate itself writes none.
#![allow(unsafe_code)]

use ::outpost_batch::{BatchHeader, DecodedBatch, Dictionaries, Dictionary, Value};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

create_exception!(
    outpost_batch,
    DecodeError,
    PyValueError,
    "A batch that is not a valid Outpost batch (truncated, corrupt, unknown dictionary, ...)."
);

fn decode_error(e: impl std::fmt::Display) -> PyErr {
    DecodeError::new_err(e.to_string())
}

fn header_dict<'py>(py: Python<'py>, h: &BatchHeader) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("gateway_id", h.gateway_id.as_str())?;
    d.set_item("seq", h.seq)?;
    d.set_item("first_ts_ms", h.first_ts_ms)?;
    d.set_item("last_ts_ms", h.last_ts_ms)?;
    d.set_item("reading_count", h.reading_count)?;
    d.set_item("dictionary_id", h.dictionary_id.map(|id| id.get()))?;
    d.set_item("unsynchronised", h.unsynchronised)?;
    d.set_item("version", h.version)?;
    Ok(d)
}

/// The header of a batch (checksum verified), without decompressing its body.
#[pyfunction]
fn read_header<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let header = ::outpost_batch::read_header(data).map_err(decode_error)?;
    header_dict(py, &header)
}

/// Decodes a whole batch. `dictionaries`: the zstd dictionaries (bytes, as a gateway serves them
/// at /api/v1/dictionaries/{id}) the batch may have been sealed with.
#[pyfunction]
#[pyo3(signature = (data, dictionaries=None))]
fn decode(py: Python<'_>, data: Vec<u8>, dictionaries: Option<Vec<Vec<u8>>>) -> PyResult<Batch> {
    let batch = py.allow_threads(move || -> Result<DecodedBatch, String> {
        let mut all = Dictionaries::new();
        for bytes in dictionaries.unwrap_or_default() {
            let dictionary = Dictionary::from_bytes(bytes).map_err(|e| e.to_string())?;
            all.insert(dictionary).map_err(|e| e.to_string())?;
        }
        ::outpost_batch::decode(&data, &all).map_err(|e| e.to_string())
    });
    batch.map(|inner| Batch { inner }).map_err(decode_error)
}

/// A decoded batch.
#[pyclass(frozen, module = "outpost_batch")]
struct Batch {
    inner: DecodedBatch,
}

/// A reading's value as (value as float, raw integer or None, exponent or None): a decimal is
/// `raw × 10**exp` exactly, with `value` its nearest float; a float has no raw or exponent.
fn parts(value: Value) -> (f64, Option<i64>, Option<i8>) {
    match value {
        Value::Decimal { raw, exp } => (value.as_f64(), Some(raw), Some(exp)),
        Value::Float(v) => (v, None, None),
    }
}

#[pymethods]
impl Batch {
    /// The header: gateway_id, seq, first_ts_ms, last_ts_ms, reading_count, dictionary_id,
    /// unsynchronised, version.
    #[getter]
    fn header<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        header_dict(py, self.inner.header())
    }

    fn __len__(&self) -> usize {
        self.inner.header().reading_count as usize
    }

    fn __repr__(&self) -> String {
        let h = self.inner.header();
        format!(
            "<outpost_batch.Batch gateway={:?} seq={} readings={}>",
            h.gateway_id.as_str(),
            h.seq,
            h.reading_count
        )
    }

    /// Every reading as a tuple (source, channel, ts_ms, value, raw, exp), in the decoder's
    /// order: sources by name, samples in order, channels by name.
    fn rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for r in self.inner.readings() {
            let (value, raw, exp) = parts(r.value);
            list.append(PyTuple::new(
                py,
                [
                    r.source.into_pyobject(py)?.into_any(),
                    r.channel.into_pyobject(py)?.into_any(),
                    r.ts_ms.into_pyobject(py)?.into_any(),
                    value.into_pyobject(py)?.into_any(),
                    raw.into_pyobject(py)?.into_any(),
                    exp.into_pyobject(py)?.into_any(),
                ],
            )?)?;
        }
        Ok(list)
    }

    /// The readings as a pyarrow Table: source and channel (dictionary-encoded strings), ts
    /// (timestamp[ms, tz=UTC]), value (float64), raw (int64, null for floats), exp (int8, null
    /// for floats). Needs pyarrow.
    fn to_arrow<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pa = py.import("pyarrow")?;
        let n = self.inner.header().reading_count as usize;
        let (mut source, mut channel) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut ts, mut value) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut raw, mut exp) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for r in self.inner.readings() {
            let (v, x, e) = parts(r.value);
            source.push(r.source);
            channel.push(r.channel);
            ts.push(r.ts_ms);
            value.push(v);
            raw.push(x);
            exp.push(e);
        }
        let array =
            |values: Bound<'py, PyAny>, ty: Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
                let kwargs = PyDict::new(py);
                kwargs.set_item("type", ty)?;
                pa.call_method("array", (values,), Some(&kwargs))
            };
        let string = pa.call_method0("string")?;
        let columns = PyDict::new(py);
        columns.set_item(
            "source",
            array(source.into_pyobject(py)?.into_any(), string.clone())?
                .call_method0("dictionary_encode")?,
        )?;
        columns.set_item(
            "channel",
            array(channel.into_pyobject(py)?.into_any(), string)?
                .call_method0("dictionary_encode")?,
        )?;
        let ms = pa.call_method1("timestamp", ("ms", "UTC"))?;
        columns.set_item("ts", array(ts.into_pyobject(py)?.into_any(), ms)?)?;
        columns.set_item(
            "value",
            array(
                value.into_pyobject(py)?.into_any(),
                pa.call_method0("float64")?,
            )?,
        )?;
        columns.set_item(
            "raw",
            array(raw.into_pyobject(py)?.into_any(), pa.call_method0("int64")?)?,
        )?;
        columns.set_item(
            "exp",
            array(exp.into_pyobject(py)?.into_any(), pa.call_method0("int8")?)?,
        )?;
        pa.getattr("table")?.call1((columns,))
    }

    /// One JSON object per reading and line, exactly as `outpost batch decode` prints them.
    fn to_json_lines(&self, py: Python<'_>) -> String {
        py.allow_threads(|| self.inner.to_json_lines())
    }
}

#[pymodule]
#[pyo3(name = "outpost_batch")]
fn outpost_batch_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DecodeError", m.py().get_type::<DecodeError>())?;
    m.add_function(wrap_pyfunction!(read_header, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_class::<Batch>()?;
    m.add("FORMAT_VERSION", ::outpost_batch::FORMAT_VERSION)?;
    Ok(())
}
