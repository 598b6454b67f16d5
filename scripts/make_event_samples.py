"""Writes the small JSONL and log samples used by the bundled templates (seeded)."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "beam_etl" / "data"
SEED = 7
USERS = ["ada", "linus", "grace", "ken", "barbara", "edsger", "margaret", "dennis"]
PAGES = ["/", "/cart", "/checkout", "/search", "/product/17", "/product/42", "/help"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "Mozilla/5.0 (Macintosh)"]


def write_events(rng: random.Random, rows: int = 600) -> dict[str, int]:
    """Click events: nested ``user`` object and ``tags`` list; a few malformed lines."""
    start = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    lines, malformed = [], 0
    for i in range(rows):
        if i % 97 == 13:
            lines.append(f'{{"event_id": {i}, "type": "click", "user": {{"name": ')  # truncated JSON
            malformed += 1
            continue
        ts = start + dt.timedelta(seconds=rng.randint(0, 7 * 86400))
        event = {
            "event_id": i,
            "type": rng.choice(["view", "click", "purchase"]),
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "user": {"name": rng.choice(USERS), "premium": rng.random() < 0.2},
            "page": rng.choice(PAGES),
            "value": round(rng.uniform(1, 300), 2) if rng.random() < 0.3 else None,
            "tags": rng.sample(["mobile", "promo", "returning", "eu", "us"], k=rng.randint(0, 3)),
        }
        lines.append(json.dumps(event))
    (DATA / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"events": rows, "malformed": malformed}


def write_access_log(rng: random.Random, rows: int = 500) -> dict[str, int]:
    """Web server access log lines in the common log format; some garbage lines."""
    start = dt.datetime(2024, 3, 1, 8, 0, 0)
    lines, garbage = [], 0
    for i in range(rows):
        if i % 83 == 5:
            lines.append("-- log rotated --" if i % 2 else "\x00corrupt line")
            garbage += 1
            continue
        ts = (start + dt.timedelta(seconds=i * 37)).strftime("%d/%b/%Y:%H:%M:%S +0000")
        ip = f"{rng.choice(['198.51.100', '203.0.113', '192.0.2'])}.{rng.randint(1, 254)}"
        status = rng.choice([200, 200, 200, 304, 404, 500])
        size = rng.randint(200, 50_000)
        lines.append(f'{ip} - - [{ts}] "GET {rng.choice(PAGES)} HTTP/1.1" {status} {size} "{rng.choice(AGENTS)}"')
    (DATA / "access.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"lines": rows, "garbage": garbage}


def main() -> None:
    rng = random.Random(SEED)
    print("events.jsonl", write_events(rng))
    print("access.log", write_access_log(rng))


if __name__ == "__main__":
    main()
