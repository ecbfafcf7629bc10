# Nagle + delayed ACK on loopback: one 700-byte message per ms from a server socket with and
# without TCP_NODELAY, latency at a reading client (docs/BENCHMARKS.md, consumer API).
import socket, threading, time, struct, sys
def run(nodelay):
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    port = srv.getsockname()[1]
    lat = []
    def client():
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while True:
            d = c.recv(65536)
            if not d: break
            buf += d
            while len(buf) >= 700:
                msg, buf = buf[:700], buf[700:]
                (t,) = struct.unpack("d", msg[:8])
                lat.append(time.perf_counter() - t)
    th = threading.Thread(target=client); th.start()
    conn, _ = srv.accept()
    if nodelay: conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.perf_counter()
    for i in range(3000):
        due = start + i / 1000
        while time.perf_counter() < due: time.sleep(0.0002)
        conn.sendall(struct.pack("d", time.perf_counter()) + b"x" * 692)
    conn.close(); th.join()
    lat.sort()
    print("nodelay" if nodelay else "nagle  ", "p50 %.2f ms p99 %.2f ms max %.2f ms" % (lat[len(lat)//2]*1e3, lat[int(len(lat)*0.99)]*1e3, lat[-1]*1e3))
run(False); run(True)
