"""A test kernel: ipykernel whose stdin socket listens only a while after the others.

Run as a kernelspec's argv (``python tests/late_stdin_kernel.py -f
{connection_file}``) by ``tests/test_jupyter_host.py``: it answers on shell at
once, while a client's stdin socket cannot connect yet, which is what ZMQ's
reconnect timing can produce by chance with any kernel (see
``yotonnet.kernel.jupyter``: a kernel is ready only once our stdin socket's
handshake succeeded, else its first ``input_request`` is dropped).
"""

import os
import threading

import zmq
from ipykernel.kernelapp import IPKernelApp

#: seconds the stdin socket stays unbound
DELAY = float(os.environ.get("LATE_STDIN_DELAY", "2.0"))


class LateStdinKernelApp(IPKernelApp):
    def init_sockets(self) -> None:
        super().init_sockets()
        endpoint = self.stdin_socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.stdin_socket.unbind(endpoint)
        # (the kernel's own thread does not touch its stdin socket until an input())
        threading.Timer(DELAY, self.stdin_socket.bind, (endpoint,)).start()


if __name__ == "__main__":
    LateStdinKernelApp.launch_instance()
