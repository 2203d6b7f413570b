"""Reads messages with pika, as a consumer outside this project does, and prints what a Python
consumer sees of each: its AMQP properties, its headers with the Python type pika decoded each
value to, and when it arrived (milliseconds since the epoch).

    read_properties.py AMQP_URL QUEUE COUNT [--timeout SECONDS]

Prints one JSON object per message on standard output, in the order the queue delivered them;
exits 1 with the reason on standard error when fewer than COUNT arrive in time.
"""

import argparse
import json
import sys
import time

import pika


def described(value):
    """A header value as JSON, with the type pika gave it."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, dict):
        return {"type": "dict", "value": {k: described(v) for k, v in value.items()}}
    elif isinstance(value, list):
        return {"type": "list", "value": [described(v) for v in value]}
    return {"type": type(value).__name__, "value": value if isinstance(value, (str, int, float, bool)) or value is None else str(value)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("count", type=int)
    parser.add_argument("--timeout", type=float, default=20)
    args = parser.parse_args()
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    deadline = time.monotonic() + args.timeout
    got = 0
    while got < args.count:
        method, properties, body = channel.basic_get(args.queue, auto_ack=True)
        if method is None:
            if time.monotonic() > deadline:
                print(f"{got} of {args.count} messages arrived in {args.queue}", file=sys.stderr)
                sys.exit(1)
            time.sleep(0.05)
            continue
        got += 1
        print(json.dumps({
            "receivedAt": int(time.time() * 1000),
            "messageId": properties.message_id, "routingKey": method.routing_key, "type": properties.type, "priority": properties.priority,
            "expiration": properties.expiration, "contentType": properties.content_type,
            "headers": {k: described(v) for k, v in (properties.headers or {}).items()},
        }), flush=True)
    connection.close()


if __name__ == "__main__":
    main()
