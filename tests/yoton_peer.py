"""A real Yoton 2.2 context in a child process, driven line by line on stdin.

Yoton ships inside the ``pyzo`` package and imports itself as top-level
``yoton``: this script puts the installed ``pyzo`` folder on ``sys.path``
(``python yoton_peer.py --check`` prints where, or exits 3 when pyzo is not
installed). Each stdin line is a command; each answer is one stdout line
starting with a word the test waits for. Values travel as JSON.

    bind HOST:PORT            -> "bound PORT"         (Yoton accepts one peer per bind)
    connect HOST:PORT         -> "connected"
    linkstate                 -> "linkstate STATUS REASON" (of the last connection)
    id                        -> "id HEX"
    pub|sub|state NAME TYPE   -> "ok"                 (TYPE: TEXT, BINARY, OBJECT)
    rep NAME                  -> "ok"                 (add, echo, fail, whoami; thread mode)
    req NAME                  -> "ok"
    sync NAME                 -> "ok"                 (SubChannel sync mode on)
    loop                      -> "ok"                 (Yoton event loop in a thread)
    send NAME JSON            -> "sent"
    recv NAME SECONDS         -> "got JSON" | "got-nothing"
    count NAME N SECONDS      -> "count N_RECEIVED LAST_JSON"
    set NAME JSON             -> "set"
    waitstate NAME JSON SECS  -> "state JSON"         (polls until equal, or the timeout)
    call NAME METHOD JSONARGS SECONDS -> "result JSON" | "error TEXT"
    flood NAME N              -> "flooded N SECONDS"  (sends N messages 0..N-1)
    close                     -> "closed"
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time


def pyzo_dir() -> str | None:
    spec = importlib.util.find_spec("pyzo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = list(spec.submodule_search_locations)[0]
    return path if os.path.isdir(os.path.join(path, "yoton")) else None


def main() -> int:
    where = pyzo_dir()
    if "--check" in sys.argv:
        print(where or "missing")
        return 0 if where else 3
    if where is None:
        print("error pyzo is not installed (pip install --no-deps pyzo)")
        return 3
    sys.path.insert(0, where)
    import yoton  # noqa: PLC0415 - only importable once pyzo's folder is on sys.path

    types = {"TEXT": yoton.TEXT, "BINARY": yoton.BINARY, "OBJECT": yoton.OBJECT}
    ctx = yoton.Context()
    channels: dict[str, object] = {}

    class Rep(yoton.RepChannel):
        def add(self, a, b):
            return a + b

        def fail(self, text):
            raise ValueError(text)

        def whoami(self):
            return f"yoton-{os.getpid()}"

    def value_out(value: object) -> str:
        if isinstance(value, bytes):
            value = {"bytes": value.decode("latin-1")}
        elif isinstance(value, tuple):
            value = {"tuple": list(value)}
        return json.dumps(value)

    def value_in(text: str, kind: str) -> object:
        value = json.loads(text)
        if kind == "BINARY":
            return value.encode("latin-1")
        return value

    kinds: dict[str, str] = {}
    connections: list = []
    close_reasons: list[str] = []

    def on_closed(connection: object, reason: str) -> None:
        close_reasons.append(reason)

    print("ready", flush=True)
    for raw in sys.stdin:
        cmd, _, rest = raw.strip().partition(" ")
        if not cmd:
            continue
        # NAME first, then the rest (JSON may hold spaces); a trailing number is split
        # off by the commands that take one.
        args = rest.split(" ", 2) if cmd in ("call", "count") else rest.split(" ", 1)
        try:
            if cmd == "bind":
                conn = ctx.bind(args[0])
                conn.closed.bind(on_closed)
                connections.append(conn)
                print(f"bound {conn.port1}")
            elif cmd == "connect":
                conn = ctx.connect(args[0], timeout=5.0)
                conn.closed.bind(on_closed)
                connections.append(conn)
                print("connected")
            elif cmd == "linkstate":
                yoton.process_events()  # the closed signal is delivered as an event
                status = "connected" if connections[-1].is_connected else "closed"
                reason = close_reasons[-1] if close_reasons else "-"
                print(f"linkstate {status} {reason}")
            elif cmd == "id":
                print(f"id {ctx.id:016x}")
            elif cmd in ("pub", "sub", "state"):
                cls = {"pub": yoton.PubChannel, "sub": yoton.SubChannel,
                       "state": yoton.StateChannel}[cmd]
                channels[cmd + ":" + args[0]] = cls(ctx, args[0], types[args[1]])
                kinds[args[0]] = args[1]
                print("ok")
            elif cmd == "rep":
                channels["rep:" + args[0]] = rep = Rep(ctx, args[0])
                rep.set_mode("thread")
                print("ok")
            elif cmd == "req":
                channels["req:" + args[0]] = yoton.ReqChannel(ctx, args[0])
                print("ok")
            elif cmd == "sync":
                channels["sub:" + args[0]].set_sync_mode(True)
                print("ok")
            elif cmd == "loop":
                threading.Thread(target=yoton.start_event_loop, daemon=True).start()
                print("ok")
            elif cmd == "send":
                channels["pub:" + args[0]].send(value_in(args[1], kinds[args[0]]))
                print("sent")
            elif cmd == "recv":
                message = channels["sub:" + args[0]].recv(float(args[1]))
                if message in ("", b"", None):
                    print("got-nothing")
                else:
                    print("got " + value_out(message))
            elif cmd == "count":
                sub, want = channels["sub:" + args[0]], int(args[1])
                deadline = time.time() + float(args[2])
                got, last = 0, None
                while got < want and time.time() < deadline:
                    message = sub.recv(0.2)
                    if message not in ("", b"", None):
                        got, last = got + 1, message
                print(f"count {got} {value_out(last)}")
            elif cmd == "set":
                channels["state:" + args[0]].send(value_in(args[1], kinds[args[0]]))
                print("set")
            elif cmd == "waitstate":
                tail = args[1].rsplit(" ", 1)
                want, deadline = json.loads(tail[0]), time.time() + float(tail[1])
                state = channels["state:" + args[0]]
                value = state.recv()
                while value != want and time.time() < deadline:
                    time.sleep(0.02)
                    value = state.recv()
                print("state " + value_out(value))
            elif cmd == "call":
                method, tail = args[1], args[2].rsplit(" ", 1)
                call_args, timeout = json.loads(tail[0]), float(tail[1])
                future = getattr(channels["req:" + args[0]], method)(*call_args)
                future.set_auto_cancel_timeout(timeout)
                try:
                    print("result " + value_out(future.result(timeout)))
                except Exception as e:  # noqa: BLE001 - reported to the test as text
                    text = str(e).replace("\n", " | ")
                    print(f"error {type(e).__name__}: {text}")
            elif cmd == "flood":
                pub, n = channels["pub:" + args[0]], int(args[1])
                start = time.time()
                for i in range(n):
                    pub.send(str(i))
                print(f"flooded {n} {time.time() - start:.3f}")
            elif cmd == "close":
                ctx.close()
                print("closed")
            else:
                print("error unknown command " + cmd)
        except Exception as e:  # noqa: BLE001 - the test reads the line
            print(f"error {type(e).__name__}: {e}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
