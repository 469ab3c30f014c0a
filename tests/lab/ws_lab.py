#!/usr/bin/env python3
"""WebSocket over TLS for the real-client lab (the `websockets` package).

    ws_lab.py serve --listen IP:PORT --cert PEM --key PEM    prints READY, echoes on every path
    ws_lab.py call wss://HOST/PATH [--cafile PEM]            sends `hello`, prints the echo

`call` uses Python's default TLS context (the system store, or SSL_CERT_FILE) unless --cafile
names a bundle: the per-tool setting a user would pass. A failure prints the exception's type and
message and exits 1.
"""

import argparse
import asyncio
import ssl
import sys


def serve(a):
    from websockets.asyncio.server import serve as ws_serve

    async def echo(ws):
        async for msg in ws:
            await ws.send(f"lab-ok {msg}")

    async def main():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        host, port = a.listen.rsplit(":", 1)
        async with ws_serve(echo, host, int(port), ssl=ctx):
            print("READY", flush=True)
            # Ends when stdin closes (the test stops it) or on SIGTERM.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


def call(a):
    from websockets.sync.client import connect

    ctx = ssl.create_default_context(cafile=a.cafile)
    try:
        with connect(a.url, ssl=ctx, open_timeout=20) as ws:
            ws.send("hello")
            print(ws.recv(timeout=20), flush=True)
    except Exception as e:  # what the library raised is what the user sees
        print(f"websocket error: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    c = sub.add_parser("call")
    c.add_argument("url")
    c.add_argument("--cafile")
    a = p.parse_args()
    serve(a) if a.cmd == "serve" else call(a)


if __name__ == "__main__":
    main()
