"""A script using BlockingKernelClient (no reactor of its own), run by tests/test_kernel_cli.py.

Usage: kernel_blocking_peer.py ENDPOINT KERNEL. Runs code with output,
input() and an error, reads the output with recv_output(), asks for
completions and the status, and prints one JSON object with what it saw.
"""

from __future__ import annotations

import json
import sys

from yotonnet.kernel import BlockingKernelClient


def main() -> None:
    endpoint, name = sys.argv[1], sys.argv[2]
    asked = []

    def on_input(prompt: str, password: bool) -> str:
        asked.append(prompt)
        return "typed"

    with BlockingKernelClient(name, connect=endpoint, user="script", on_input=on_input,
                              history=0, timeout=20) as client:
        info = client.attach()
        ok = client.execute("print('from script'); answer = input('q? '); 40 + 2", timeout=20)
        err = client.execute("raise ValueError('bad')", timeout=20)
        seen = []
        while True:
            message = client.recv_output(timeout=10)
            if message is None:
                break
            seen.append([message["kind"], message["text"]])
            if message["kind"] == "error":
                break
        print(json.dumps({
            "role": info["role"],
            "value": ok.value,
            "error": [err.error_type, err.message],
            "asked": asked,
            "seen": seen,
            "complete": client.complete("answ"),
            "state": client.status()["state"],
            "link": client.status()["link"],
        }), flush=True)


if __name__ == "__main__":
    main()
