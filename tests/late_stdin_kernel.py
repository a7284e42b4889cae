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
    def _bind_socket(self, s: zmq.Socket, port: int) -> int:
        if s is getattr(self, "stdin_socket", None) and port > 0:
            # Bound DELAY s from now, not bound and unbound at once: a client that
            # connected in between (the kernel being slow on a loaded machine) would see
            # a handshake succeed, then its connection go until the bind. (The kernel's
            # own thread does not touch its stdin socket until an input().)
            threading.Timer(DELAY, self._try_bind_socket, (s, port)).start()
            return port
        return super()._bind_socket(s, port)


if __name__ == "__main__":
    LateStdinKernelApp.launch_instance()
