"""Unit tests of the outpost_batch package on committed batches (sealed by the Rust builder;
tests/python_decoder.rs checks they still are). Run: target/py/bin/python -m unittest discover -s cloud/python/tests"""

import math
import pathlib
import unittest

import outpost_batch

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def load(name):
    return (FIXTURES / name).read_bytes()


class Decode(unittest.TestCase):
    def test_header(self):
        h = outpost_batch.read_header(load("mixed.batch"))
        self.assertEqual(h["gateway_id"], "site-0007")
        self.assertEqual(h["seq"], 1)
        self.assertEqual(h["reading_count"], 1000)
        self.assertIsNone(h["dictionary_id"])
        self.assertFalse(h["unsynchronised"])
        self.assertTrue(outpost_batch.read_header(load("unsynchronised.batch"))["unsynchronised"])

    def test_rows_keep_decimals_exact(self):
        batch = outpost_batch.decode(load("mixed.batch"))
        self.assertEqual(len(batch), 1000)
        rows = batch.rows()
        self.assertEqual(len(rows), 1000)
        first = [r for r in rows if r[1] == "temperature"][0]
        self.assertEqual(first, ("e2e0000000000001", "temperature", 1796169600000, 21.5, 2150, -2))
        pf = [r for r in rows if r[1] == "power_factor"][0]
        self.assertIsNone(pf[4])
        self.assertIsNone(pf[5])

    def test_edge_floats_and_gaps(self):
        rows = outpost_batch.decode(load("edges.batch")).rows()
        floats = [r[3] for r in rows if r[1] == "f"]
        self.assertTrue(math.isnan(floats[0]))
        self.assertEqual(floats[1:3], [math.inf, -math.inf])
        self.assertEqual(math.copysign(1.0, floats[3]), -1.0)
        self.assertEqual(len([r for r in rows if r[1] == "sometimes"]), 3)
        self.assertIn(("node-b", "min", -5, float(-(2**63)), -(2**63), 0), rows)

    def test_arrow(self):
        import pyarrow as pa

        table = outpost_batch.decode(load("mixed.batch")).to_arrow()
        self.assertEqual(table.num_rows, 1000)
        self.assertEqual(table.schema.field("ts").type, pa.timestamp("ms", tz="UTC"))
        self.assertEqual(table.column("raw").null_count, 200)
        self.assertEqual(table.column("exp").type, pa.int8())

    def test_json_lines(self):
        lines = outpost_batch.decode(load("unsynchronised.batch")).to_json_lines()
        self.assertEqual(lines, '{"source":"node-c","channel":"t","ts_ms":12345,"value":10}\n')

    def test_bad_input_raises_decode_error(self):
        good = load("mixed.batch")
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x01
        for bad in [b"", b"garbage", good[:-1], bytes(flipped), good + b"x"]:
            with self.assertRaises(outpost_batch.DecodeError):
                outpost_batch.decode(bad)
            with self.assertRaises(ValueError):
                outpost_batch.decode(bad)


if __name__ == "__main__":
    unittest.main()
