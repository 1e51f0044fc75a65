"""Decodes each batch file named on the command line with outpost_batch and prints one JSON
object per batch: its header, its rows (floats as their IEEE-754 bits, so NaN and -0.0 compare
exactly), its JSON lines, and its pyarrow table's columns; or the error. tests/python.rs compares
this with the Rust decoder's answers."""

import json
import struct
import sys

import outpost_batch


def bits(x):
    return struct.unpack("<q", struct.pack("<d", x))[0]


def dump(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        batch = outpost_batch.decode(data)
    except outpost_batch.DecodeError as e:
        return {"error": str(e), "value_error": isinstance(e, ValueError)}
    rows = [[s, c, ts, bits(v), raw, exp] for (s, c, ts, v, raw, exp) in batch.rows()]
    table = batch.to_arrow()
    arrow = {
        "source": [str(x) for x in table.column("source").to_pylist()],
        "channel": [str(x) for x in table.column("channel").to_pylist()],
        "ts_ms": table.column("ts").cast("int64").to_pylist(),
        "value": [bits(v) for v in table.column("value").to_pylist()],
        "raw": table.column("raw").to_pylist(),
        "exp": table.column("exp").to_pylist(),
        "types": [str(t) for t in table.schema.types],
    }
    header = batch.header
    return {
        "header": header,
        "len": len(batch),
        "rows": rows,
        "json_lines": batch.to_json_lines(),
        "arrow": arrow,
    }


for path in sys.argv[1:]:
    print(json.dumps(dump(path)))
