"""The kernel side: a small REPL driver run in the kernel process, standard library only.

The broker starts ``python driver.py`` (by path, so the kernel's namespace
holds none of yotonnet's or Twisted's modules) with these pipes:

* fd 0: closed input (``input()`` goes through the broker instead);
* fd 1, fd 2: stdout and stderr, buffered here and flushed every 50 ms or
  every 8 KiB. A write blocks while the pipe is full, and the broker stops
  reading it while the mesh cannot take more: that is what paces a
  ``while True: print(...)`` loop without losing a line;
* fd 3 (broker -> kernel) and fd 4 (kernel -> broker): commands and replies,
  one JSON object per line;
* fd 5 (kernel -> broker): one byte every 0.1 s from a heartbeat *thread*.
  A Python thread runs only while it can take the GIL, so when the heartbeat
  stops while the process lives, the interpreter is stuck in C code holding
  the GIL: the broker's "very-busy".

After each execution the driver writes an end marker (see
``protocol.marker_prefix``; the token comes in ``YOTONNET_KERNEL_TOKEN``) to
stdout and stderr, then the reply on fd 4, so the broker can tag every byte
of output with the execution that wrote it.

``display(obj)`` (a builtin here, as in IPython; with ``update_display`` and
``clear_output``) writes a frame into stdout (``protocol.frame``: the marker
prefix, ``D``, a JSON record, NUL) holding ``obj``'s MIME bundle from its
``_repr_*_`` methods, so a display keeps its place among the printed lines; a
final expression's value with rich representations carries its bundle too.

Code runs in the main thread, so SIGINT (the broker's interrupt) raises
KeyboardInterrupt in it; while idle, SIGINT is ignored. Each execution
begins with a ``started`` reply, and the broker holds an interrupt back until
it came; one that lands while the code's own reply line (an ``input()``
request) is being written waits until the line is whole. Completion and
inspection run in the command thread, so they answer while code runs.
"""

import ast
import builtins
import io
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback

CMD_FD, REPLY_FD, HEARTBEAT_FD = 3, 4, 5
HEARTBEAT_INTERVAL = 0.1
FLUSH_INTERVAL = 0.05
BUFFER_BYTES = 8192


def reprlib_repr(value):
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = 200
    return short.repr(value)


#: (method, MIME type) of the rich representations an object may have, as IPython has them
REPR_METHODS = (
    ("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"), ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"), ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"), ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
BINARY_TYPES = ("image/png", "image/jpeg", "application/pdf")


def mime_bundle(obj):
    """``(data, metadata)``: Jupyter's MIME bundle of ``obj`` from its ``_repr_*_``
    methods (``_repr_mimebundle_`` first), binary ones base64, with ``text/plain`` its
    repr. A method that raises or returns None gives nothing."""
    import base64

    data, metadata = {}, {}
    if isinstance(obj, type):
        return {"text/plain": repr(obj)}, {}  # a class's _repr_*_ are its instances'
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        try:
            got = method(include=None, exclude=None)
        except Exception:  # noqa: BLE001 - a broken repr shows as the others
            got = None
        if isinstance(got, tuple) and len(got) == 2:
            got, more = got
            if isinstance(more, dict):
                metadata.update(more)
        if isinstance(got, dict):
            data.update(got)
    for name, mime in REPR_METHODS:
        if mime in data:
            continue
        method = getattr(obj, name, None)
        if not callable(method):
            continue
        try:
            value = method()
        except Exception:  # noqa: BLE001
            continue
        if isinstance(value, tuple) and len(value) == 2:
            value, more = value
            if isinstance(more, dict):
                metadata[mime] = more
        if value is None:
            continue
        if mime in BINARY_TYPES and isinstance(value, bytes | bytearray):
            value = base64.b64encode(bytes(value)).decode("ascii")
        data[mime] = value
    for mime, value in list(data.items()):
        if isinstance(value, bytes | bytearray):
            data[mime] = base64.b64encode(bytes(value)).decode("ascii")
    if "text/plain" not in data:
        data["text/plain"] = repr(obj)
    return data, metadata


def users_traceback(error):
    """The traceback of ``error`` with the user's frames only, as IPython shows it.

    The driver's own frames are hidden wherever they are: the REPL around the
    code (before ``<kernel-N>``), and what the code's ``print``, ``input()``
    or a signal ran inside the driver (after it: a Ctrl-C lands in the
    driver's ``write`` or ``on_sigint`` as often as in the user's loop).
    """
    here = {__file__, os.path.abspath(__file__)}
    te = traceback.TracebackException(type(error), error, error.__traceback__)
    todo, seen = [te], set()
    while todo:
        one = todo.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        one.stack = traceback.StackSummary.from_list(
            [frame for frame in one.stack if frame.filename not in here])
        todo.extend(x for x in (one.__cause__, one.__context__) if x is not None)
        todo.extend(getattr(one, "exceptions", None) or [])
    return "".join(te.format())


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class PipeStream(io.TextIOBase):
    """A text stream onto a pipe: buffered, thread-safe, flushed by size and by a timer."""

    def __init__(self, fd, name):
        super().__init__()
        self._fd = fd
        self._name = name
        self._parts = []
        self._size = 0
        self._lock = threading.Lock()

    @property
    def name(self):
        return self._name

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "replace"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        data = text.encode("utf-8", "replace")
        with self._lock:
            self._parts.append(data)
            self._size += len(data)
            if self._size >= BUFFER_BYTES:
                self._flush_locked()
        return len(text)

    def write_raw(self, data):
        """Bytes straight after what is buffered (the end marker)."""
        with self._lock:
            self._parts.append(data)
            self._flush_locked()

    def flush(self):
        with self._lock:
            self._flush_locked()

    def _flush_locked(self):
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts = []
        self._size = 0
        write_all(self._fd, data)


class Driver:
    def __init__(self, token):
        self.marker = b"\x00\x1bYTN" + token.encode("ascii") + b":"
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
        self.commands = queue.Queue()
        self.inputs = queue.Queue()
        self.reply_lock = threading.Lock()
        self.executing = False
        self.current = None
        #: a SIGINT came while it could not raise (see on_sigint); raised when it can
        self.interrupted = False
        #: the main thread is writing a reply line, which a KeyboardInterrupt would cut
        self.critical = False
        self.asked = 0
        self.stdout = PipeStream(1, "<stdout>")
        self.stderr = PipeStream(2, "<stderr>")

    # --- replies

    def write_frame(self, record):
        """``record`` (a display) into the output stream, in order with the text printed
        before and after it (see ``protocol.frame``)."""
        payload = json.dumps(record, default=str).encode("ascii")  # no raw NUL in it
        # (half a frame would swallow what follows)
        self.uninterrupted(self.stdout.write_raw, self.marker + b"D" + payload + b"\x00")

    def uninterrupted(self, write, data):
        """``write(data)`` whole: on the main thread a SIGINT meanwhile waits (half a line
        or frame would garble what follows), and its KeyboardInterrupt is raised after."""
        main = threading.current_thread() is threading.main_thread()
        outer = self.critical
        if main:
            self.critical = True
        try:
            write(data)
        finally:
            if main:
                self.critical = outer
        if main and not outer and self.executing and self.interrupted:
            self.interrupted = False
            raise KeyboardInterrupt

    def display(self, *objs, display_id=None, metadata=None, raw=False):
        """Show each object as Jupyter frontends do (its richest representation), and as
        its repr on a terminal. ``display_id`` names it for ``update_display``; ``raw``:
        the objects are MIME bundles already."""
        for obj in objs:
            if raw and isinstance(obj, dict):
                data, md = dict(obj), {}
            else:
                data, md = mime_bundle(obj)
            if metadata:
                md.update(metadata)
            record = {"kind": "display", "data": data, "metadata": md}
            if display_id is not None:
                record["transient"] = {"display_id": str(display_id)}
            self.write_frame(record)

    def update_display(self, obj, *, display_id, metadata=None):
        """New content for the display named ``display_id``."""
        data, md = mime_bundle(obj)
        if metadata:
            md.update(metadata)
        self.write_frame({"kind": "update_display", "data": data, "metadata": md,
                          "transient": {"display_id": str(display_id)}})

    def clear_output(self, wait=False):
        """Clear the output shown so far (``wait``: when the next output comes)."""
        self.write_frame({"kind": "clear_output", "wait": bool(wait)})

    def send(self, message):
        data = (json.dumps(message) + "\n").encode("utf-8", "replace")
        self.uninterrupted(self._write_reply, data)

    def _write_reply(self, data):
        with self.reply_lock:
            write_all(REPLY_FD, data)

    # --- threads

    def heartbeat(self):
        while True:
            try:
                os.write(HEARTBEAT_FD, b".")
            except OSError:
                os._exit(0)  # the broker is gone
            time.sleep(HEARTBEAT_INTERVAL)

    def flusher(self):
        while True:
            time.sleep(FLUSH_INTERVAL)
            try:
                self.stdout.flush()
                self.stderr.flush()
            except OSError:
                os._exit(0)  # the broker is gone

    def read_commands(self):
        with os.fdopen(CMD_FD, "rb", buffering=0) as raw:
            for line in io.BufferedReader(raw):
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                op = message.get("op")
                if op == "complete":
                    self.complete(message)
                elif op == "inspect":
                    self.inspect(message)
                elif op == "input_reply":
                    self.inputs.put(message)
                else:
                    self.commands.put(message)
        self.commands.put({"op": "shutdown"})  # the broker closed the pipe

    # --- operations

    def complete(self, message):
        text = message.get("text", "")
        try:
            import rlcompleter

            completer = rlcompleter.Completer(self.namespace)
            matches = []
            for state in range(1000):
                match = completer.complete(text, state)
                if match is None:
                    break
                if match not in matches:
                    matches.append(match)
        except Exception:  # noqa: BLE001 - the namespace may change meanwhile
            matches = []
        self.send({"op": "completions", "id": message["id"], "matches": matches})

    def inspect(self, message):
        """What the (dotted) name around the cursor is: its type, signature and
        docstring (with detail > 0 its source too). Names are looked up, never
        evaluated."""
        code = str(message.get("code", ""))
        pos = message.get("cursor_pos")
        pos = len(code) if not isinstance(pos, int) else max(0, min(pos, len(code)))
        start = end = pos
        word = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
        while start > 0 and code[start - 1] in word:
            start -= 1
        while end < len(code) and code[end] in word:
            end += 1
        name = code[start:end].strip(".")
        text, found = "", False
        try:
            parts = name.split(".")
            if parts[0] in self.namespace:
                obj = self.namespace[parts[0]]
            else:
                obj = getattr(builtins, parts[0])
            for part in parts[1:]:
                obj = getattr(obj, part)
            import inspect

            lines = [f"{name}: {type(obj).__name__}"]
            try:
                lines.append(f"signature: {name}{inspect.signature(obj)}")
            except (TypeError, ValueError):
                pass
            if not callable(obj) and not inspect.ismodule(obj):
                lines.append(f"value: {reprlib_repr(obj)}")
            doc = inspect.getdoc(obj)
            if doc:
                lines.append(doc)
            if message.get("detail"):
                try:
                    lines.append(inspect.getsource(obj))
                except (OSError, TypeError):
                    pass
            text, found = "\n".join(lines) + "\n", True
        except Exception:  # noqa: BLE001 - no such name, or a getattr that raised
            pass
        self.send({"op": "inspection", "id": message["id"], "found": found, "text": text})

    def ask(self, prompt, password=False):
        """input() and getpass(): ask the user who runs the code, through the broker."""
        self.stdout.flush()
        self.stderr.flush()
        self.asked += 1
        self.send({"op": "input", "id": self.current, "req": self.asked,
                   "prompt": str(prompt), "password": bool(password)})
        while True:
            answer = self.inputs.get()
            if answer.get("req") == self.asked:
                break  # (others: late answers to questions an interrupt abandoned)
        if answer.get("error"):
            raise EOFError(answer["error"])
        return answer.get("value", "")

    def execute(self, message):
        exec_id = message["id"]
        self.interrupted = False
        self.current = exec_id
        # From here a SIGINT is for this code: the broker holds back an interrupt asked
        # before it reads this (a signal before would find nothing to interrupt).
        self.send({"op": "started", "id": exec_id})
        reply = {"op": "done", "id": exec_id, "status": "ok", "value": None}
        try:
            try:
                self.executing = True
                if self.interrupted:
                    self.interrupted = False
                    raise KeyboardInterrupt
                value = self.run(message.get("code", ""))
            finally:
                self.executing = False
            if value is not None:
                builtins._ = value
                reply["value"] = repr(value)
                data, metadata = mime_bundle(value)
                if len(data) > 1:  # something richer than its repr
                    data["text/plain"] = reply["value"]
                    reply["data"], reply["metadata"] = data, metadata
        except BaseException as e:  # noqa: BLE001 - SystemExit too: the kernel lives on
            reply.update(
                status="error",
                type=type(e).__name__,
                message=str(e),
                traceback=users_traceback(e),
            )
        self.current = None
        try:
            self.stdout.write_raw(self.marker + str(exec_id).encode() + b"\x00")
            self.stderr.write_raw(self.marker + str(exec_id).encode() + b"\x00")
        except KeyboardInterrupt:
            pass
        self.send(reply)

    def run(self, code):
        filename = f"<kernel-{self.current}>"
        import linecache

        # So tracebacks show the lines of the code that was run.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        if tree.body:
            exec(compile(tree, filename, "exec"), self.namespace)
        if last is not None:
            return eval(compile(last, filename, "eval"), self.namespace)
        return None

    # --- main loop

    def on_sigint(self, signum, frame):
        if self.current is None:
            return  # between executions: nothing to interrupt
        if self.executing and not self.critical:
            raise KeyboardInterrupt
        self.interrupted = True  # raised as soon as it can be (execute, send)

    def main(self):
        sys.stdout = sys.__stdout__ = self.stdout
        sys.stderr = sys.__stderr__ = self.stderr
        sys.stdin = sys.__stdin__ = io.StringIO("")
        builtins.input = lambda prompt="": self.ask(prompt)
        import getpass

        getpass.getpass = lambda prompt="Password: ", stream=None: self.ask(prompt, True)
        builtins.display = self.display
        builtins.update_display = self.update_display
        builtins.clear_output = self.clear_output
        signal.signal(signal.SIGINT, self.on_sigint)
        for target in (self.heartbeat, self.flusher, self.read_commands):
            threading.Thread(target=target, name=f"yotonnet-{target.__name__}",
                             daemon=True).start()
        self.send({"op": "ready", "pid": os.getpid(), "python": sys.version.split()[0]})
        while True:
            try:
                message = self.commands.get()
            except KeyboardInterrupt:
                continue
            op = message.get("op")
            if op == "execute":
                self.execute(message)
            elif op == "shutdown":
                break
        self.stdout.flush()
        self.stderr.flush()


def main():
    # Run by path: Python put this file's folder first on sys.path; a kernel's imports
    # should see the working directory instead, as an interactive interpreter does.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path[0] = ""
    token = os.environ.pop("YOTONNET_KERNEL_TOKEN", "")
    if not token:
        sys.exit("yotonnet kernel driver: run by the broker (yotonnet kernel NAME), not by hand")
    Driver(token).main()
    os._exit(0)


if __name__ == "__main__":
    main()
