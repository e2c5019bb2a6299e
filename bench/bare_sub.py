"""The physical limit beside the receiver: a bare pyzmq SUB that only receives and
msgpack-decodes the same messages. Prints ``{"received": n, "last": monotonic}`` as JSON once no
message has come for ``--idle`` seconds (after the first) or ``--limit`` seconds have passed."""

from __future__ import annotations

import argparse
import json
import time

import msgpack
import zmq


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--limit", type=float, default=600.0)
    args = parser.parse_args()
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1_000_000)  # as the receiver
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(args.bind)
    print("ready", flush=True)
    received, last = 0, 0.0
    unpack, recv = msgpack.unpackb, sub.recv_multipart
    end = time.monotonic() + args.limit
    try:
        while time.monotonic() < end:
            if not sub.poll(int(args.idle * 1000)):
                if received:
                    break
                continue
            while True:
                try:
                    frames = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                unpack(frames[1])
                received += 1
            last = time.monotonic()
    finally:
        sub.close(linger=0)
        context.term()
    print(json.dumps({"received": received, "last": last}), flush=True)


if __name__ == "__main__":
    main()
