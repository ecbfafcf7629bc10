#!/usr/bin/env python3
"""A consumer of outboxd's embedded log over HTTP, with the Python standard library only.

It receives messages of a consumer group, processes each one idempotently (an event already
processed, recorded by its id in a SQLite file, is skipped: outboxd delivers at least once, so
a message whose ack was lost comes again), and acks them; a message that fails is nacked and
comes back after a delay. Messages of one key (aggregate id) reach the group in order, one at a
time, whatever the number of consumers running this script.

    OUTBOXD_URL=http://127.0.0.1:9187 OUTBOXD_TOKEN=... python3 examples/consumer.py billing

Options: --db processed.sqlite (where processed ids are kept), --max N (stop after N
messages; for tests), --visibility-ms (how long a message stays with this consumer).
"""

import argparse
import json
import os
import sqlite3
import sys
import urllib.error
import urllib.request


def call(base, token, method, path, body=None):
    """Sends one request to the consumer API; returns the JSON answer, raises on an error."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=90) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{method} {path}: {err.code} {err.read().decode()}") from None


def process(record):
    """The application's work. Here: print the event as one JSON line."""
    event = record["event"]
    print(json.dumps({"offset": record["offset"], "key": record["key"], "id": event["id"],
                      "type": event["type"], "payload": event["payload"]}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group")
    parser.add_argument("--db", default="processed.sqlite")
    parser.add_argument("--max", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--visibility-ms", type=int, default=30000)
    args = parser.parse_args()
    base = os.environ.get("OUTBOXD_URL", "http://127.0.0.1:9187").rstrip("/")
    token = os.environ.get("OUTBOXD_TOKEN", "")
    db = sqlite3.connect(args.db)
    db.execute("CREATE TABLE IF NOT EXISTS processed (event_id TEXT PRIMARY KEY)")
    done = 0
    while not args.max or done < args.max:
        answer = call(base, token, "POST", f"/v1/groups/{args.group}/receive",
                      {"max": 50, "wait_ms": 20000, "visibility_ms": args.visibility_ms})
        acks, nacks = [], []
        for message in answer["messages"]:
            record = message["record"]
            event_id = record["event"]["id"]
            try:
                if db.execute("SELECT 1 FROM processed WHERE event_id = ?",
                              (event_id,)).fetchone() is None:
                    process(record)
                    # Committed before the ack: a crash in between only means a repeat,
                    # which the check above skips.
                    with db:
                        db.execute("INSERT INTO processed VALUES (?)", (event_id,))
                acks.append(message["ack_id"])
            except Exception as err:  # the application failed: try again later
                print(f"event {event_id} failed: {err}", file=sys.stderr)
                nacks.append(message["ack_id"])
        if acks:
            call(base, token, "POST", f"/v1/groups/{args.group}/ack", {"ack_ids": acks})
        if nacks:
            call(base, token, "POST", f"/v1/groups/{args.group}/nack",
                 {"ack_ids": nacks, "delay_ms": 5000})
        done += len(acks)


if __name__ == "__main__":
    main()
