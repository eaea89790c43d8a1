"""A client that never reads, against `cachelayer serve` over HTTP/2: CONNS connections with a
zero stream window (SETTINGS_INITIAL_WINDOW_SIZE 0), each asking for STREAMS distinct list
pages (as many as the server grants at once) and never sending WINDOW_UPDATE; it samples the
server's resident memory (VmRSS of PID) and reports the peak and when the server closed the
connections. Needs the `h2` package (`pip install h2`).

    python3 bench/h2_stall.py PORT PID CONNS STREAMS SECONDS
"""
import socket, sys, time, threading
import h2.connection, h2.config, h2.settings, h2.events
port, pid, conns, streams, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
closed = [None] * conns
def client(i):
    s = socket.create_connection(("127.0.0.1", port))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    s.sendall(c.data_to_send())
    sent = 0
    s.settimeout(0.2)
    start = time.time()
    while time.time() - start < seconds + 5:
        while sent < streams and c.open_outbound_streams < c.remote_settings.max_concurrent_streams:
            sid = c.get_next_available_stream_id()
            off = (i * streams + sent) % 900
            c.send_headers(sid, [(':method', 'GET'), (':path', f'/products?limit=100&offset={off}'), (':scheme', 'http'), (':authority', 'x')], end_stream=True)
            sent += 1
        s.sendall(c.data_to_send())
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            closed[i] = time.time(); return
        if not d:
            closed[i] = time.time(); return
        c.receive_data(d)
        s.sendall(c.data_to_send())
t0 = time.time()
print("rss before", rss(), "MB")
threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(conns)]
for t in threads: t.start()
peak = 0
while time.time() - t0 < seconds:
    peak = max(peak, rss()); time.sleep(0.5)
    if all(closed): break
print("rss peak", peak, "MB; rss now", rss(), "MB")
print("connections closed by server:", sum(1 for x in closed if x), "of", conns,
      "after", [round(x - t0, 1) for x in closed if x][:3], "s")
