"""An echo server on 127.0.0.1:--port, the upstream of the soak's proxy-mode daemon: every
byte received is sent back. One thread per connection; runs until the soak kills it (it
also SIGSTOPs / SIGCONTs it and starts it again on the same port).

usage: echo_upstream.py --port PORT
"""

import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        while True:
            try:
                data = sock.recv(65536)
                if not data:
                    return
                sock.sendall(data)
            except OSError:
                return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # restart on the same port at once
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--port":
        sys.exit(__doc__)
    with Server(("127.0.0.1", int(sys.argv[2])), Echo) as server:
        server.serve_forever()
