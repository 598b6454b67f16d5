#!/usr/bin/env python
"""Seeded, vectorised generator of the benchmark CSV.

    python benchmarks/generate.py --rows 10000000 --out /tmp/orders_10m.csv --seed 42

Columns: ``id, name, email, city, country, amount, quantity, ts, category, status``.

* About ``--dup-frac`` (10%) of the rows repeat an earlier row's ``id``; a repeated row is a
  byte-for-byte copy of the first one (a redelivered record), so "keep the first
  occurrence" and "keep any occurrence" give the same result and every benchmark
  implementation must agree on the output.
* About ``--null-frac`` (5%) of the distinct rows have exactly one empty field, in a column
  chosen uniformly among all ten (so ~1.5% have a null in ``id``, ``category`` or ``amount``).

Every value of a distinct row is a hash of (seed, row key), so rows are generated chunk
by chunk in bounded memory and the same seed always writes the same bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

COLUMNS = ["id", "name", "email", "city", "country", "amount", "quantity", "ts", "category", "status"]
FIRST_NAMES = [
    "James", "Mary", "Michael", "Jennifer", "David", "Linda", "Robert", "Emily", "Oliver", "Amelia", "Harry",
    "Isla", "Lukas", "Anna", "Leon", "Marie", "Lucas", "Léa", "Hugo", "Chloé", "Pablo", "Lucía", "María",
    "Sofía", "Giulia", "Matteo", "Daan", "Emma", "Miguel", "Helena", "Aarav", "Ananya", "Priya", "Rohan",
    "Haruto", "Yui", "Sakura", "Liam", "Noah", "Charlotte", "Ava", "Mia", "Jack", "Leo", "Zoe", "Omar",
    "Fatima", "Chen", "Wei", "Ingrid",
]
LAST_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Garcia", "Wilson", "Taylor", "Evans",
    "O'Brien", "Walker", "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Martin", "Bernard", "Dubois",
    "Durand", "Moreau", "García", "Fernández", "López", "Rossi", "Russo", "Ferrari", "de Jong", "Jansen",
    "de Vries", "Silva", "Santos", "Oliveira", "Sharma", "Patel", "Singh", "Kumar", "Sato", "Suzuki",
    "Tanaka", "Tremblay", "Roy", "Nguyen", "Kim", "Park", "Novak", "Kowalski", "Hansen",
]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com", "proton.me", "web.de",
           "orange.fr", "libero.it", "example.org"]
CITIES = [
    ("New York", "United States"), ("Chicago", "United States"), ("Austin", "United States"),
    ("Seattle", "United States"), ("London", "United Kingdom"), ("Manchester", "United Kingdom"),
    ("Berlin", "Germany"), ("Hamburg", "Germany"), ("München", "Germany"), ("Paris", "France"),
    ("Lyon", "France"), ("Madrid", "Spain"), ("Barcelona", "Spain"), ("Roma", "Italy"), ("Milano", "Italy"),
    ("Amsterdam", "Netherlands"), ("São Paulo", "Brazil"), ("Mumbai", "India"), ("Bengaluru", "India"),
    ("Tokyo", "Japan"), ("Osaka", "Japan"), ("Toronto", "Canada"), ("Sydney", "Australia"),
    ("Warszawa", "Poland"),
]
# category -> median order amount; 8 groups, unevenly sized
CATEGORIES = {"electronics": 240.0, "books": 22.0, "clothing": 55.0, "home": 85.0, "grocery": 38.0,
              "toys": 32.0, "sports": 65.0, "beauty": 27.0}
CATEGORY_WEIGHTS = [14, 14, 18, 12, 16, 8, 10, 8]
STATUSES = ["delivered", "shipped", "paid", "pending", "cancelled", "refunded"]
STATUS_WEIGHTS = [45, 20, 12, 10, 8, 5]
TS_START = 1_704_067_200  # 2024-01-01T00:00:00Z
TS_SPAN = 366 * 86_400
CHUNK_ROWS = 1 << 20

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _hash(keys: np.ndarray, seed: int, salt: int) -> np.ndarray:
    offset = np.uint64((seed * 0x2545F4914F6CDD1D + salt * 0x9E3779B97F4A7C15) % (1 << 64))
    return _mix(keys * _GOLDEN + offset)


def _uniform(h: np.ndarray) -> np.ndarray:
    """[0, 1) doubles from the top 53 bits."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pick(h: np.ndarray, weights: list[int]) -> np.ndarray:
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.searchsorted(cdf / cdf[-1], _uniform(h), side="right").astype(np.int32)


def _vocab() -> dict[str, pa.Array]:
    names = [f"{f} {la}" for f in FIRST_NAMES for la in LAST_NAMES]

    def ascii_lower(text: str) -> str:
        import unicodedata

        folded = unicodedata.normalize("NFKD", text)
        return "".join(c for c in folded if c.isascii() and c.isalnum()).lower()

    locals_ = [f"{ascii_lower(f)}.{ascii_lower(la)}" for f in FIRST_NAMES for la in LAST_NAMES]
    return {
        "name": pa.array(names), "local": pa.array(locals_), "domain": pa.array(["@" + d for d in DOMAINS]),
        "city": pa.array([c for c, _ in CITIES]), "country": pa.array([k for _, k in CITIES]),
        "category": pa.array(list(CATEGORIES)), "status": pa.array(STATUSES),
    }


def _distinct_rows(keys: np.ndarray, seed: int, vocab: dict[str, pa.Array]) -> pa.Table:
    """Every column of the rows with keys ``keys`` (uint64), before nulls are applied."""
    ids = ((keys * np.uint64(2_654_435_761)) % np.uint64(1 << 32)).astype(np.int64) + 1_000_000_000
    name_idx = (_hash(keys, seed, 1) % np.uint64(len(vocab["name"]))).astype(np.int32)
    h_mail = _hash(keys, seed, 2)
    digits = (h_mail % np.uint64(100)).astype(np.int64)
    suffix = pc.if_else(pa.array(digits < 60), "", pc.cast(pa.array(digits), pa.string()))
    email = pc.binary_join_element_wise(
        vocab["local"].take(pa.array(name_idx)), suffix,
        vocab["domain"].take(pa.array(((h_mail >> np.uint64(8)) % np.uint64(len(DOMAINS))).astype(np.int32))), "",
    )
    city_idx = pa.array((_hash(keys, seed, 3) % np.uint64(len(CITIES))).astype(np.int32))
    cat_idx = _pick(_hash(keys, seed, 4), CATEGORY_WEIGHTS)
    medians = np.asarray(list(CATEGORIES.values()))[cat_idx]
    u1 = np.maximum(_uniform(_hash(keys, seed, 5)), 1e-12)
    u2 = _uniform(_hash(keys, seed, 6))
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    amount = np.round(np.clip(medians * np.exp(0.6 * z), 1.0, None), 2)
    quantity = 1 + _pick(_hash(keys, seed, 7), [50, 25, 12, 7, 4, 2]).astype(np.int64)
    ts = TS_START + (_hash(keys, seed, 8) % np.uint64(TS_SPAN)).astype(np.int64)
    status_idx = pa.array(_pick(_hash(keys, seed, 9), STATUS_WEIGHTS))

    columns = {
        "id": pa.array(ids), "name": vocab["name"].take(pa.array(name_idx)), "email": email,
        "city": vocab["city"].take(city_idx), "country": vocab["country"].take(city_idx),
        "amount": pa.array(amount), "quantity": pa.array(quantity),
        "ts": pc.strftime(pa.array(ts.astype("datetime64[s]")), format="%Y-%m-%dT%H:%M:%S"),
        "category": vocab["category"].take(pa.array(cat_idx)), "status": vocab["status"].take(status_idx),
    }
    return pa.table(columns)


def _null_masks(keys: np.ndarray, seed: int, null_frac: float) -> dict[str, np.ndarray]:
    h = _hash(keys, seed, 10)
    has_null = _uniform(h) < null_frac
    which = ((h >> np.uint64(5)) % np.uint64(len(COLUMNS))).astype(np.int64)
    return {c: has_null & (which == i) for i, c in enumerate(COLUMNS)}


def _chunk_keys(rngs: tuple[np.random.Generator, np.random.Generator], n: int, distinct_before: int,
                dup_frac: float) -> tuple[np.ndarray, int]:
    """Row keys for one chunk: new keys count up, a duplicate reuses an earlier key.

    One generator draws "is it a duplicate", the other "of which row", so the output does
    not depend on the chunk size.
    """
    is_dup = rngs[0].random(n) < dup_frac
    new_count = np.cumsum(~is_dup)
    before = distinct_before + new_count - (~is_dup)  # distinct keys strictly before each row
    is_dup &= before > 0
    new_count = np.cumsum(~is_dup)
    before = distinct_before + new_count - (~is_dup)
    keys = (distinct_before + new_count - 1).astype(np.uint64)
    picks = (rngs[1].random(n) * np.maximum(before, 1)).astype(np.uint64)
    keys[is_dup] = picks[is_dup]
    return keys, distinct_before + int(new_count[-1])


def generate(rows: int, out: str | Path, seed: int = 42, null_frac: float = 0.05, dup_frac: float = 0.10,
             chunk_rows: int = CHUNK_ROWS) -> dict:
    """Writes ``rows`` data rows to ``out``; returns a small summary."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rngs = tuple(np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(2))
    vocab = _vocab()
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("email", pa.string()), ("city", pa.string()),
                        ("country", pa.string()), ("amount", pa.float64()), ("quantity", pa.int64()),
                        ("ts", pa.string()), ("category", pa.string()), ("status", pa.string())])
    tmp = out.with_name(out.name + ".tmp")
    distinct = dup_rows = null_rows = 0
    options = pacsv.WriteOptions(include_header=True, quoting_style="none", quoting_header="none")
    with pacsv.CSVWriter(str(tmp), schema, write_options=options) as writer:
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            keys, new_distinct = _chunk_keys(rngs, n, distinct, dup_frac)
            dup_rows += n - (new_distinct - distinct)
            distinct = new_distinct
            table = _distinct_rows(keys, seed, vocab)
            masks = _null_masks(keys, seed, null_frac)
            arrays = []
            for name in COLUMNS:
                col = table.column(name).combine_chunks()
                mask = masks[name]
                null_rows += int(mask.sum())
                arrays.append(pc.if_else(pa.array(mask), pa.scalar(None, col.type), col) if mask.any() else col)
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    tmp.replace(out)
    return {"rows": rows, "distinct_ids": distinct, "duplicate_rows": dup_rows, "rows_with_null": null_rows,
            "path": str(out), "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="data rows to write (header not counted)")
    parser.add_argument("--out", required=True, help="CSV path to write")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--null-frac", type=float, default=0.05, help="fraction of distinct rows with one null")
    parser.add_argument("--dup-frac", type=float, default=0.10, help="fraction of rows repeating an earlier id")
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error("--rows must be >= 0")
    t0 = time.perf_counter()
    info = generate(args.rows, args.out, args.seed, args.null_frac, args.dup_frac)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
