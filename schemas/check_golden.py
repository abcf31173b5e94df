#!/usr/bin/env python3
"""Decode the golden samples with an independent Avro implementation (fastavro).

For every testdata/<stem>.bin: check the single-object header (C3 01 + the
CRC-64-AVRO fingerprint, little-endian, of the .avsc file's parsing canonical form),
decode the datum with the .avsc file alone, and compare it with testdata/<stem>.json
read by fastavro's Avro JSON decoder. Exits non-zero on the first mismatch.
"""
import io
import json
import pathlib
import sys

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

HERE = pathlib.Path(__file__).resolve().parent
GOLDENS = {
    "RawWebhook": "RawWebhook",
    "PolicyEvent": "PolicyEvent",
    "PolicyEvent-cancelled": "PolicyEvent",
    "PolicyEvent-duplicated": "PolicyEvent",
    "PolicyRequest": "PolicyRequest",
    "DeadLetter": "DeadLetter",
    "GapTimeout": "GapTimeout",
}


def main() -> int:
    for stem, schema_name in GOLDENS.items():
        raw_schema = json.loads((HERE / "avro" / f"{schema_name}.avsc").read_text())
        schema = fastavro.parse_schema(raw_schema)
        fp = fingerprint(to_parsing_canonical_form(raw_schema), "CRC-64-AVRO")
        # fastavro returns the fingerprint as the hex of its little-endian bytes.
        want_header = b"\xc3\x01" + bytes.fromhex(fp)
        data = (HERE / "testdata" / f"{stem}.bin").read_bytes()
        if data[:10] != want_header:
            print(f"FAIL {stem}.bin: header {data[:10].hex()} != {want_header.hex()}")
            return 1
        buf = io.BytesIO(data[10:])
        decoded = fastavro.schemaless_reader(buf, schema, None)
        if buf.read():
            print(f"FAIL {stem}.bin: trailing bytes after the datum")
            return 1
        # json_reader reads one record per line: compact the pretty-printed file first.
        text = json.dumps(json.loads((HERE / "testdata" / f"{stem}.json").read_text()))
        expected = list(fastavro.json_reader(io.StringIO(text), schema))
        if [decoded] != expected:
            print(f"FAIL {stem}: .bin decodes to {decoded!r}\n  but .json reads as {expected!r}")
            return 1
        print(f"ok   {stem}.bin decodes with {schema_name}.avsc and equals {stem}.json (fastavro {fastavro.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
