#!/usr/bin/env python
"""Writes the bundled quickstart data set ``beam_etl/data/customers_orders.csv``.

A realistic, deliberately messy customer/order export (stdlib only, fixed seed, so the
same file comes out every time)::

    python scripts/make_sample_data.py            # writes the CSV and its README
    python scripts/make_sample_data.py --check    # regenerates in memory, fails if the files differ

Defects, each counted exactly and written to ``customers_orders.README.md``:

* nulls (empty fields) in ~5% of rows, spread over all columns, some in the required
  ``order_id`` / ``customer_id`` / ``amount``;
* exact duplicate lines (~4%), always after their original;
* near duplicates (~4%): the same order re-entered with name case/whitespace changes,
  an upper-cased e-mail, a small misspelling or another date format; most keep the order
  id (possibly with different case or padding), the rest got a new order id;
* malformed lines (~1%): too few / too many columns, unbalanced quotes (in pairs, so a
  whole-file parser merges the two lines into one bad record and the rest of the file is
  unaffected), non-numeric amounts (``"12,50€"``, ``abc``) and quantities (``two``);
* amount outliers (~1%), about 100x the category's typical amount;
* five ``order_date`` formats: ``2024-03-05``, ``05/03/2024`` (day first),
  ``March 5, 2024``, ``2024-03-05T10:20:00Z`` and ``20240305``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import math
import random
import sys
import unicodedata
from collections import Counter
from pathlib import Path

SEED = 20240305
N_CUSTOMERS = 900
N_ORDERS = 3000
N_EXACT_DUPLICATES = 120
N_NEAR_DUP_SAME_ID = 80
N_NEAR_DUP_NEW_ID = 40
N_NULL_ROWS = 150
N_OUTLIERS = 30
N_TOO_FEW = 8
N_TOO_MANY = 8
N_UNBALANCED_PAIRS = 3
BAD_AMOUNTS = ["12,50€", "abc", "€45.00", "1.234,56", "USD 30", "12.5.3"]
BAD_QUANTITIES = ["two", "three", "one", "2 pcs"]

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "beam_etl" / "data"
CSV_PATH = DATA_DIR / "customers_orders.csv"
README_PATH = DATA_DIR / "customers_orders.README.md"

COLUMNS = [
    "order_id", "customer_id", "name", "email", "phone", "city", "country",
    "amount", "quantity", "order_date", "category", "status",
]
REQUIRED = ["order_id", "customer_id", "amount"]

# country: (weight, cities with a phone area code, first names, last names, local mail domains, phone format)
COUNTRIES: dict[str, tuple] = {
    "United States": (
        22, [("New York", "212"), ("Chicago", "312"), ("Austin", "512"), ("Seattle", "206"), ("Boston", "617")],
        ["James", "Mary", "Michael", "Jennifer", "David", "Linda", "Robert", "Emily", "Daniel", "Ashley",
         "Christopher", "Jessica"],
        ["Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Garcia", "Rodriguez", "Wilson",
         "Anderson", "Taylor"],
        ["comcast.net", "att.net"], "+1 ({area}) 555-{d4}",
    ),
    "United Kingdom": (
        12, [("London", "20"), ("Manchester", "161"), ("Leeds", "113"), ("Bristol", "117"), ("Edinburgh", "131")],
        ["Oliver", "Amelia", "Harry", "Isla", "George", "Olivia", "Jack", "Emily", "Charlie", "Sophie"],
        ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Evans", "Thomas", "O'Brien", "Walker"],
        ["btinternet.com", "sky.com"], "+44 {area} {d3} {d4}",
    ),
    "Germany": (
        12, [("Berlin", "30"), ("Hamburg", "40"), ("München", "89"), ("Köln", "221"), ("Frankfurt", "69")],
        ["Lukas", "Anna", "Leon", "Marie", "Finn", "Sophie", "Jonas", "Lena", "Paul", "Hannah"],
        ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Hoffmann", "Schäfer"],
        ["web.de", "gmx.de"], "+49 {area} {d4}{d3}",
    ),
    "France": (
        10, [("Paris", "1"), ("Lyon", "4"), ("Marseille", "4"), ("Toulouse", "5"), ("Bordeaux", "5")],
        ["Lucas", "Léa", "Hugo", "Chloé", "Louis", "Manon", "Gabriel", "Camille", "Arthur", "Inès"],
        ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau"],
        ["orange.fr", "free.fr"], "+33 {area} {d2} {d2} {d2} {d2}",
    ),
    "Spain": (
        8, [("Madrid", "91"), ("Barcelona", "93"), ("Valencia", "96"), ("Sevilla", "95"), ("Bilbao", "94")],
        ["Hugo", "Lucía", "Martín", "María", "Pablo", "Paula", "Alejandro", "Sofía", "Daniel", "Carmen"],
        ["García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez", "Pérez", "Gómez", "Ruiz"],
        ["telefonica.net"], "+34 6{d2} {d3} {d3}",
    ),
    "Italy": (
        7, [("Roma", "06"), ("Milano", "02"), ("Napoli", "081"), ("Torino", "011"), ("Bologna", "051")],
        ["Leonardo", "Giulia", "Francesco", "Sofia", "Alessandro", "Aurora", "Lorenzo", "Chiara", "Matteo",
         "Francesca"],
        ["Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino", "Greco"],
        ["libero.it", "tiscali.it"], "+39 {area} {d4} {d3}",
    ),
    "Netherlands": (
        5, [("Amsterdam", "20"), ("Rotterdam", "10"), ("Utrecht", "30"), ("Eindhoven", "40")],
        ["Daan", "Emma", "Sem", "Julia", "Lucas", "Tess", "Finn", "Sara", "Levi", "Anna"],
        ["de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Visser", "Smit", "Meijer",
         "de Boer"],
        ["ziggo.nl", "kpnmail.nl"], "+31 {area} {d3} {d4}",
    ),
    "Brazil": (
        6, [("São Paulo", "11"), ("Rio de Janeiro", "21"), ("Belo Horizonte", "31"), ("Curitiba", "41")],
        ["Miguel", "Alice", "Arthur", "Helena", "Gael", "Laura", "Heitor", "Valentina", "Davi", "Beatriz"],
        ["Silva", "Santos", "Oliveira", "Souza", "Lima", "Pereira", "Ferreira", "Costa", "Rodrigues", "Almeida"],
        ["uol.com.br", "bol.com.br"], "+55 {area} 9{d4}-{d4}",
    ),
    "India": (
        7, [("Mumbai", "22"), ("Bengaluru", "80"), ("Delhi", "11"), ("Chennai", "44"), ("Pune", "20")],
        ["Aarav", "Ananya", "Vivaan", "Diya", "Aditya", "Saanvi", "Arjun", "Isha", "Rohan", "Priya"],
        ["Sharma", "Patel", "Singh", "Kumar", "Gupta", "Iyer", "Reddy", "Nair", "Mehta", "Rao"],
        ["rediffmail.com"], "+91 9{d4} {d3}{d2}",
    ),
    "Japan": (
        4, [("Tokyo", "3"), ("Osaka", "6"), ("Kyoto", "75"), ("Yokohama", "45")],
        ["Haruto", "Yui", "Sota", "Hina", "Yuto", "Mei", "Riku", "Sakura", "Ren", "Aoi"],
        ["Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura", "Kobayashi", "Kato"],
        ["yahoo.co.jp", "docomo.ne.jp"], "+81 {area}-{d4}-{d4}",
    ),
    "Canada": (
        4, [("Toronto", "416"), ("Vancouver", "604"), ("Montréal", "514"), ("Calgary", "403"), ("Ottawa", "613")],
        ["Liam", "Olivia", "Noah", "Emma", "William", "Charlotte", "Benjamin", "Ava", "Lucas", "Amelia"],
        ["Tremblay", "Gagnon", "Roy", "Côté", "Smith", "Brown", "Wilson", "MacDonald", "Lee", "Martin"],
        ["shaw.ca", "rogers.com"], "+1 ({area}) 555-{d4}",
    ),
    "Australia": (
        3, [("Sydney", "2"), ("Melbourne", "3"), ("Brisbane", "7"), ("Perth", "8"), ("Adelaide", "8")],
        ["Oliver", "Charlotte", "Noah", "Amelia", "Jack", "Isla", "William", "Mia", "Leo", "Ava"],
        ["Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Nguyen", "Johnson", "Martin", "White"],
        ["bigpond.com", "optusnet.com.au"], "+61 {area} {d4} {d4}",
    ),
}
GLOBAL_MAIL = ["gmail.com", "gmail.com", "gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com",
               "proton.me"]
# category: (weight, typical order amount)
CATEGORIES = {
    "electronics": (14, 240.0), "books": (14, 22.0), "clothing": (18, 55.0), "home": (12, 85.0),
    "grocery": (16, 38.0), "toys": (8, 32.0), "sports": (10, 65.0), "beauty": (8, 27.0),
}
STATUSES = {"delivered": 45, "shipped": 20, "paid": 12, "pending": 10, "cancelled": 8, "refunded": 5}
QUANTITY_WEIGHTS = {1: 50, 2: 25, 3: 12, 4: 7, 5: 4, 6: 2}
# name in README: (weight, strftime-ish renderer)
DATE_FORMATS = {
    "iso_date": 60,        # 2024-03-05
    "dd_mm_yyyy": 12,      # 05/03/2024
    "month_name": 10,      # March 5, 2024
    "iso_datetime_z": 10,  # 2024-03-05T10:20:00Z
    "yyyymmdd": 8,         # 20240305
}
# fields that get blanked, with weights; required fields included on purpose
NULL_FIELD_WEIGHTS = {
    "order_id": 10, "customer_id": 10, "amount": 15, "name": 18, "email": 22, "phone": 25, "city": 10,
    "country": 8, "quantity": 7, "order_date": 10, "category": 5, "status": 5,
}


def _weighted(rng: random.Random, table: dict) -> object:
    keys = list(table)
    weights = [v[0] if isinstance(v, tuple) else v for v in table.values()]
    return rng.choices(keys, weights=weights, k=1)[0]


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    return "".join(c for c in folded if c.isascii() and (c.isalnum())).lower()


def format_date(when: dt.datetime, fmt: str) -> str:
    if fmt == "iso_date":
        return when.strftime("%Y-%m-%d")
    if fmt == "dd_mm_yyyy":
        return when.strftime("%d/%m/%Y")
    if fmt == "month_name":
        return f"{when.strftime('%B')} {when.day}, {when.year}"
    if fmt == "iso_datetime_z":
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if fmt == "yyyymmdd":
        return when.strftime("%Y%m%d")
    raise ValueError(fmt)


def _phone(rng: random.Random, pattern: str, area: str) -> str:
    """Fills ``{area}`` and each ``{dN}`` placeholder with its own N random digits."""
    out = pattern.replace("{area}", area)
    while "{d" in out:
        start = out.index("{d")
        end = out.index("}", start)
        width = int(out[start + 2:end])
        out = out[:start] + f"{rng.randrange(10 ** width):0{width}d}" + out[end + 1:]
    return out


def make_customers(rng: random.Random) -> list[dict]:
    customers = []
    used_emails: set[str] = set()
    for i in range(N_CUSTOMERS):
        country = _weighted(rng, COUNTRIES)
        _, cities, firsts, lasts, local_domains, phone_fmt = COUNTRIES[country]
        city, area = rng.choice(cities)
        first, last = rng.choice(firsts), rng.choice(lasts)
        f, la = _ascii(first), _ascii(last)
        while True:
            local = rng.choice([f"{f}.{la}", f"{f}{la}", f"{f[0]}.{la}", f"{f}_{la}",
                                f"{f}.{la}{rng.randrange(10, 99)}", f"{la}.{f}", f"{f}{rng.randrange(1970, 2005)}"])
            domain = rng.choice(GLOBAL_MAIL + local_domains * 2)
            email = f"{local}@{domain}"
            if email not in used_emails:
                used_emails.add(email)
                break
        customers.append({
            "customer_id": f"C{i + 1:05d}", "name": f"{first} {last}", "email": email,
            "phone": _phone(rng, phone_fmt, area), "city": city, "country": country,
        })
    return customers


def _typo(rng: random.Random, word: str) -> str:
    """One small misspelling: swap, drop, double or replace a letter (never the first)."""
    if len(word) < 4:
        return word + word[-1]
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(["swap", "drop", "double", "vowel"])
    if kind == "swap" and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "vowel" and word[i] in "aeiou":
        return word[:i] + rng.choice([v for v in "aeiou" if v != word[i]]) + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def near_variant(rng: random.Random, row: dict, keep_id: bool) -> tuple[dict, list[str]]:
    """A re-entered copy of ``row`` with small differences; returns it and what changed."""
    new = dict(row)
    changes: list[str] = []
    while not changes:
        if rng.random() < 0.55:
            new["name"] = rng.choice([row["name"].upper(), row["name"].lower(), f"  {row['name']}",
                                      f"{row['name']} ", row["name"].replace(" ", "  ", 1)])
            changes.append("name case/whitespace")
        elif rng.random() < 0.5:
            parts = row["name"].split(" ")
            j = rng.randrange(len(parts))
            parts[j] = _typo(rng, parts[j])
            new["name"] = " ".join(parts)
            changes.append("name misspelt")
        if rng.random() < 0.4:
            new["email"] = rng.choice([row["email"].upper(), row["email"][:1].upper() + row["email"][1:]])
            changes.append("email case")
        if rng.random() < 0.25:
            new["city"] = rng.choice([row["city"].upper(), f"{row['city']} "])
            changes.append("city case/whitespace")
        if rng.random() < 0.3:
            fmt = rng.choice([f for f in DATE_FORMATS if f != row["_date_fmt"]])
            new["order_date"] = format_date(row["_when"], fmt)
            new["_date_fmt"] = fmt
            changes.append("other date format")
        if keep_id and rng.random() < 0.3:
            new["order_id"] = rng.choice([row["order_id"].lower(), f" {row['order_id']}", f"{row['order_id']} "])
            changes.append("order_id case/whitespace")
        if [new[c] for c in COLUMNS] == [row[c] for c in COLUMNS]:
            new, changes = dict(row), []
    return new, changes


def build(seed: int = SEED) -> tuple[str, dict]:
    """Returns the CSV text and the defect counts."""
    text, counts, _ = _build(seed)
    return text, counts


def planted_outlier_ids(seed: int = SEED) -> set[str]:
    """The ``order_id`` of each planted amount outlier (``N_OUTLIERS`` of them), e.g. as anomaly labels."""
    return _build(seed)[2]


def _build(seed: int) -> tuple[str, dict, set[str]]:
    """The CSV text, the defect counts and the order ids of the planted amount outliers."""
    rng = random.Random(seed)
    customers = make_customers(rng)
    popularity = [1.0 / (rank + 1) ** 0.7 for rank in range(N_CUSTOMERS)]
    start = dt.datetime(2024, 1, 1, 8, 0, 0)
    span = dt.timedelta(days=365).total_seconds()

    orders: list[dict] = []
    for i in range(N_ORDERS):
        cust = rng.choices(customers, weights=popularity, k=1)[0]
        category = _weighted(rng, CATEGORIES)
        typical = CATEGORIES[category][1]
        amount = min(typical * 8, max(1.0, rng.lognormvariate(math.log(typical), 0.6)))
        when = start + dt.timedelta(seconds=int(span * (i + rng.random()) / N_ORDERS))
        fmt = _weighted(rng, DATE_FORMATS)
        orders.append({
            "order_id": f"ORD-{100001 + i}", **cust, "amount": f"{amount:.2f}",
            "quantity": str(_weighted(rng, QUANTITY_WEIGHTS)), "order_date": format_date(when, fmt),
            "category": category, "status": _weighted(rng, STATUSES), "_when": when, "_date_fmt": fmt,
            "_defect": None,
        })
    next_id = 100001 + N_ORDERS

    # a few customers are stored "Last, First" (quoted by the writer, which is legal CSV)
    for o in rng.sample(orders, 25):
        first, _, last = o["name"].partition(" ")
        o["name"] = f"{last}, {first}"

    indices = list(range(N_ORDERS))
    rng.shuffle(indices)
    outlier_idx = indices[:N_OUTLIERS]
    null_idx = indices[N_OUTLIERS:N_OUTLIERS + N_NULL_ROWS]
    clean_idx = indices[N_OUTLIERS + N_NULL_ROWS:]
    for i in outlier_idx:
        typical = CATEGORIES[orders[i]["category"]][1]
        orders[i]["amount"] = f"{typical * rng.uniform(80, 150):.2f}"
        orders[i]["_defect"] = "outlier"
    null_counts: Counter = Counter()
    for i in null_idx:
        field = _weighted(rng, NULL_FIELD_WEIGHTS)
        orders[i][field] = ""
        orders[i]["_defect"] = "null"
        null_counts[field] += 1

    # items: (position key, list of physical lines or a row dict)
    items: list[tuple[float, object]] = [(float(i), o) for i, o in enumerate(orders)]

    def later(i: int) -> float:
        return rng.uniform(i + 1, N_ORDERS + 0.5)

    dup_sources = rng.sample(clean_idx, N_EXACT_DUPLICATES + N_NEAR_DUP_SAME_ID + N_NEAR_DUP_NEW_ID)
    exact_src = dup_sources[:N_EXACT_DUPLICATES]
    near_same_src = dup_sources[N_EXACT_DUPLICATES:N_EXACT_DUPLICATES + N_NEAR_DUP_SAME_ID]
    near_new_src = dup_sources[N_EXACT_DUPLICATES + N_NEAR_DUP_SAME_ID:]
    for i in exact_src:
        items.append((later(i), dict(orders[i], _defect="exact_duplicate")))
    change_counts: Counter = Counter()
    for i in near_same_src:
        variant, changes = near_variant(rng, orders[i], keep_id=True)
        change_counts.update(changes)
        items.append((later(i), dict(variant, _defect="near_duplicate_same_id")))
    for i in near_new_src:
        variant, changes = near_variant(rng, orders[i], keep_id=False)
        change_counts.update(changes)
        variant["order_id"] = f"ORD-{next_id}"
        next_id += 1
        items.append((later(i), dict(variant, _defect="near_duplicate_new_id")))

    # malformed lines are joined by hand, so their source rows must need no quoting
    plain_idx = [i for i in clean_idx if not any("," in orders[i][c] for c in COLUMNS)]

    def fresh_order() -> dict:
        nonlocal next_id
        base = dict(orders[rng.choice(plain_idx)])
        base["order_id"] = f"ORD-{next_id}"
        next_id += 1
        return base

    def line(row: dict) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([row[c] for c in COLUMNS])
        return buf.getvalue().rstrip("\n")

    def raw(values: list[str]) -> str:
        return ",".join(values)

    malformed: Counter = Counter()
    for _ in range(N_TOO_FEW):
        row = fresh_order()
        keep = rng.randint(6, 10)
        items.append((rng.uniform(0, N_ORDERS), [raw([row[c] for c in COLUMNS[:keep]])]))
        malformed["too_few_columns"] += 1
    for k in range(N_TOO_MANY):
        row = fresh_order()
        values = [row[c] for c in COLUMNS]
        if k % 2 == 0:  # "Last, First" written without quotes
            first, _, last = row["name"].partition(" ")
            values[2] = f"{last}, {first}"
        else:  # decimal comma written without quotes
            values[7] = values[7].replace(".", ",")
        items.append((rng.uniform(0, N_ORDERS), [raw(values)]))
        malformed["too_many_columns"] += 1
    for _ in range(N_UNBALANCED_PAIRS):
        a, b = fresh_order(), fresh_order()
        va = [a[c] for c in COLUMNS]
        va[2] = '"' + va[2].replace(",", "")          # quote opened in name, never closed on this line
        vb = [b[c] for c in COLUMNS]
        vb[5] = '"' + vb[5]                            # the next line's stray quote in city closes it
        items.append((rng.uniform(0, N_ORDERS), [raw(va), raw(vb)]))
        malformed["unbalanced_quote_lines"] += 2
    for value in BAD_AMOUNTS:
        row = fresh_order()
        row["amount"] = value
        items.append((rng.uniform(0, N_ORDERS), dict(row, _defect="bad_amount")))
        malformed["non_numeric_amount"] += 1
    for value in BAD_QUANTITIES:
        row = fresh_order()
        row["quantity"] = value
        items.append((rng.uniform(0, N_ORDERS), dict(row, _defect="bad_quantity")))
        malformed["non_numeric_quantity"] += 1

    items.sort(key=lambda item: item[0])
    lines = [",".join(COLUMNS)]
    date_counts: Counter = Counter()
    for _, item in items:
        if isinstance(item, list):
            lines.extend(item)
        else:
            lines.append(line(item))
            date_counts[item["_date_fmt"] if item["order_date"] else "null"] += 1
    text = "\n".join(lines) + "\n"

    same_id_changed = sum(1 for _, it in items if isinstance(it, dict) and it["_defect"] == "near_duplicate_same_id"
                          and it["order_id"] != it["order_id"].strip().upper())
    counts = {
        "data_lines": len(lines) - 1,
        "base_orders": N_ORDERS,
        "rows_with_a_null": N_NULL_ROWS,
        **{f"null_{c}": null_counts[c] for c in COLUMNS},
        "exact_duplicates": N_EXACT_DUPLICATES,
        "near_duplicates_same_order_id": N_NEAR_DUP_SAME_ID,
        "near_duplicates_same_order_id_with_case_or_padding": same_id_changed,
        "near_duplicates_new_order_id": N_NEAR_DUP_NEW_ID,
        **{k: malformed[k] for k in ("too_few_columns", "too_many_columns", "unbalanced_quote_lines",
                                     "non_numeric_amount", "non_numeric_quantity")},
        "malformed_lines": sum(malformed.values()),
        "amount_outliers": N_OUTLIERS,
        **{f"date_{k}": date_counts[k] for k in DATE_FORMATS},
    }
    counts["_near_changes"] = dict(sorted(change_counts.items()))
    return text, counts, {orders[i]["order_id"] for i in outlier_idx}


DESCRIPTIONS = {
    "data_lines": "physical lines after the header",
    "base_orders": "distinct orders the file was built from",
    "rows_with_a_null": "rows with exactly one empty field (~5%)",
    "exact_duplicates": "lines that repeat an earlier line byte for byte (~4%)",
    "near_duplicates_same_order_id": "re-entered orders that keep the order id (an exact dedup on trimmed, "
                                     "upper-cased order_id removes them)",
    "near_duplicates_same_order_id_with_case_or_padding": "... of which the order id itself differs in case or "
                                                          "surrounding spaces",
    "near_duplicates_new_order_id": "re-entered orders with a new order id (only fuzzy dedup finds them)",
    "too_few_columns": "lines cut short (6-10 fields)",
    "too_many_columns": "unquoted comma in name (`Last, First`) or amount (`54,20`): 13 fields",
    "unbalanced_quote_lines": "lines with an unclosed quote, in adjacent pairs (a whole-file parser reads each "
                              "pair as one 9-field record)",
    "non_numeric_amount": "amount like `12,50€`, `abc`, `€45.00`, `1.234,56`, `USD 30`, `12.5.3`",
    "non_numeric_quantity": "quantity `two`, `three`, `one`, `2 pcs`",
    "malformed_lines": "sum of the five rows above (~1%)",
    "amount_outliers": "amount 80-150x the category's typical order (~1%)",
}


def readme(counts: dict, seed: int) -> str:
    def row(key: str, description: str = "") -> str:
        return f"| `{key}` | {counts[key]} | {description or DESCRIPTIONS.get(key, '')} |"

    null_rows = "\n".join(row(f"null_{c}", "required field" if c in REQUIRED else "") for c in COLUMNS)
    date_desc = {"iso_date": "`2024-03-05`", "dd_mm_yyyy": "`05/03/2024` (day first)",
                 "month_name": "`March 5, 2024`", "iso_datetime_z": "`2024-03-05T10:20:00Z`",
                 "yyyymmdd": "`20240305`"}
    date_rows = "\n".join(row(f"date_{k}", v) for k, v in date_desc.items())
    changes = ", ".join(f"{k}: {v}" for k, v in counts["_near_changes"].items())
    required_nulls = sum(counts[f"null_{c}"] for c in REQUIRED)
    return f"""# customers_orders.csv

The quickstart's input: a small, deliberately messy export of e-commerce orders
({counts['data_lines']} lines, UTF-8, comma-separated, `\\n` line endings, one header line).
Generated by `python scripts/make_sample_data.py` (stdlib only, seed {seed}); do not edit by hand,
rerun the script (`--check` verifies the committed copy).

Columns: `{"`, `".join(COLUMNS)}`.
Required for a usable order: `order_id`, `customer_id`, `amount`.

- {N_CUSTOMERS} customers in 12 countries ({", ".join(COUNTRIES)}); names, e-mails and phone
  numbers are made up from small word lists. About 25 names are written `Last, First` (quoted, legal CSV).
- Categories: {", ".join(CATEGORIES)}; statuses: {", ".join(STATUSES)}.
- `amount` is the order total (two decimals, `.` as decimal point), `quantity` an integer 1-6.
- Order ids `ORD-100001`... rise with the date; customer ids `C00001`... A null is an empty field.

## Defects (exact counts)

| key | count | what |
|---|---:|---|
{row("data_lines")}
{row("base_orders")}
{row("rows_with_a_null")}
{row("exact_duplicates")}
{row("near_duplicates_same_order_id")}
{row("near_duplicates_same_order_id_with_case_or_padding")}
{row("near_duplicates_new_order_id")}
{row("too_few_columns")}
{row("too_many_columns")}
{row("unbalanced_quote_lines")}
{row("non_numeric_amount")}
{row("non_numeric_quantity")}
{row("malformed_lines")}
{row("amount_outliers")}

Near duplicates change one or more of: {changes}.
Duplicates (exact and near) always come after their original and are copies of rows without
other defects; malformed lines carry order ids of their own.

### Nulls per column

| key | count | note |
|---|---:|---|
{null_rows}

### `order_date` formats (well-formed rows)

| key | count | example |
|---|---:|---|
{date_rows}

## What a clean run should end with

A pipeline that sends the {counts['malformed_lines']} malformed lines to the dead-letter queue, drops the
{required_nulls} rows with a null in a required field and removes the {counts['exact_duplicates']} exact and
{counts['near_duplicates_same_order_id']} same-id near duplicates (exact dedup on trimmed, upper-cased
`order_id`) keeps {N_ORDERS - required_nulls + counts['near_duplicates_new_order_id']} orders: the
{N_ORDERS - required_nulls} base orders without a required null plus the
{counts['near_duplicates_new_order_id']} re-keyed near duplicates that only fuzzy matching catches.
The {counts['amount_outliers']} amount outliers are among them.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=CSV_PATH, help="CSV path (README goes next to it)")
    parser.add_argument("--check", action="store_true", help="fail if the files on disk differ from a fresh build")
    args = parser.parse_args(argv)
    text, counts = build(args.seed)
    doc = readme(counts, args.seed)
    readme_path = args.out.with_name(args.out.stem + ".README.md")
    if args.check:
        same = (args.out.exists() and args.out.read_text(encoding="utf-8") == text
                and readme_path.exists() and readme_path.read_text(encoding="utf-8") == doc)
        print("up to date" if same else f"{args.out} or {readme_path} differs; rerun scripts/make_sample_data.py")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8", newline="")
    readme_path.write_text(doc, encoding="utf-8")
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({counts['data_lines']} data lines, {size / 1024:.0f} KiB) and {readme_path}")
    for key, value in counts.items():
        if not key.startswith("_"):
            print(f"  {key:52s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
