#!/usr/bin/env python3
"""gRPC over TLS for the real-client lab (grpcio, no generated code: the method carries raw bytes).

    grpc_lab.py serve --listen IP:PORT --cert PEM --key PEM     prints READY, serves until killed
    grpc_lab.py call TARGET /lab.Echo/Say [--roots PEM]         one unary call, prints the reply

`call` trusts what grpcio trusts by default (its bundled roots, or the file named by
GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) unless --roots names a bundle: the per-tool setting a user
would pass. A failed call prints the status as grpcio reports it and exits 1.
"""

import argparse
import sys

import grpc

SERVICE = "lab.Echo"


def serve(a):
    from concurrent import futures

    def reply(request, context):
        return b"lab-ok " + request

    # Both methods answer: only the agent's path rule tells them apart.
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Say": grpc.unary_unary_rpc_method_handler(reply),
        "Blocked": grpc.unary_unary_rpc_method_handler(reply),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    with open(a.cert, "rb") as c, open(a.key, "rb") as k:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    if server.add_secure_port(a.listen, creds) == 0:
        sys.exit(f"grpc_lab: cannot bind {a.listen}")
    server.start()
    print("READY", flush=True)
    # Ends when stdin closes (the test stops it) or on SIGTERM.
    sys.stdin.read()
    server.stop(0)


def call(a):
    roots = open(a.roots, "rb").read() if a.roots else None
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    with grpc.secure_channel(a.target, creds) as ch:
        method = ch.unary_unary(a.method)
        try:
            out = method(b"hello", timeout=20)
        except grpc.RpcError as e:
            print(f"grpc error: {e.code().name}: {e.details()}", flush=True)
            sys.exit(1)
    print(out.decode(), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    c = sub.add_parser("call")
    c.add_argument("target")
    c.add_argument("method")
    c.add_argument("--roots")
    a = p.parse_args()
    serve(a) if a.cmd == "serve" else call(a)


if __name__ == "__main__":
    main()
