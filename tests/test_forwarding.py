"""Forwarding runs of DATA frames: the decoder's Run records, and a forwarding node using them.

Ring 1: :class:`yotonnet.core.wire.FrameDecoder` with ``runs=True`` must decode any
byte stream, cut anywhere, into exactly the frames the plain decoder gives
(a Hypothesis property), refuse the same bad input, and :meth:`Run.relayed`
must equal re-encoding each frame with one hop less.
Ring 2: a :class:`yotonnet.testing.MemoryMesh` chain where the middle node
forwards runs: every message arrives once and in order, local subscribers on
the forwarder see them too, the hop limit still stops frames, a subscriber
sees gaps and duplicates inside a run, and credit still paces a burst.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet import BINARY, ContextConfig, PubChannel, SubChannel
from yotonnet.core import wire
from yotonnet.core.wire import HEADER_SIZE, Frame, FrameDecoder, FrameKind, ProtocolError, Run
from yotonnet.identity import IdentifiedSubChannel
from yotonnet.testing import MemoryMesh, MeshTestCase

DATA = int(FrameKind.DATA)


def data_frame(
    seq: int,
    payload: bytes = b"x" * 100,
    *,
    channel: int = 7,
    source: int = 9,
    hops: int = 10,
    tag: int = 0,
    dest: int = 0,
    ext: bytes = b"",
) -> Frame:
    return Frame(DATA, hops, tag, channel, source, dest, seq, payload, ext)


def encode(frame: Frame) -> bytes:
    return wire.encode_frame(
        frame.kind, frame.payload, tag=frame.tag, channel=frame.channel, source=frame.source,
        dest=frame.dest, seq=frame.seq, hops=frame.hops, ext=frame.ext,
    )


def expand(items: list) -> list[Frame]:
    """Runs as the frames they hold, everything else as it is."""
    out: list[Frame] = []
    for item in items:
        out.extend(item.frames() if type(item) is Run else [item])
    return out


def runs_of(frames: list[Frame]) -> list:
    return FrameDecoder(expect_preamble=False, runs=True).feed(b"".join(map(encode, frames)))


class RunDecoderTests(SynchronousTestCase):
    def test_frames_of_one_size_become_one_equally_spaced_run(self) -> None:
        frames = [data_frame(seq) for seq in range(1, 451)]
        (run,) = runs_of(frames)
        self.assertIs(type(run), Run)
        self.assertEqual((run.count, run.stride, run.offsets), (450, HEADER_SIZE + 100, None))
        self.assertEqual((run[0], run[3], run[4], run.seq), (DATA, 7, 9, 1))
        self.assertEqual(run.frames(), frames)

    def test_sizes_that_vary_keep_one_run_with_offsets(self) -> None:
        frames = [data_frame(seq, b"p" * (seq % 5) * 30) for seq in range(1, 40)]
        (run,) = runs_of(frames)
        self.assertEqual((run.count, run.stride), (39, 0))
        self.assertEqual(len(run.offsets), 39)
        self.assertEqual(run.frames(), frames)

    def test_any_other_header_difference_starts_a_new_run(self) -> None:
        frames = [
            data_frame(1), data_frame(2),
            data_frame(3, hops=9),
            data_frame(4, hops=9, tag=5),
            data_frame(5, hops=9, tag=5, channel=8),
            data_frame(6, hops=9, tag=5, channel=8, source=10),
            data_frame(7, hops=9, tag=5, channel=8, source=10, dest=3),
            data_frame(8, ext=b"ext"),  # an extension: a plain frame
            Frame(int(FrameKind.PING), 1, 0, 0, 0, 0, 0, b""),
            data_frame(9), data_frame(10),
        ]
        items = runs_of(frames)
        self.assertEqual(
            [item.count if type(item) is Run else "frame" for item in items],
            [2, 1, 1, 1, 1, 1, "frame", "frame", 2],
        )
        self.assertEqual(expand(items), frames)
        self.assertEqual(wire.count_frames(items), len(frames))

    def test_decoded_counts_the_frames_inside_runs(self) -> None:
        decoder = FrameDecoder(expect_preamble=False, runs=True)
        items = decoder.feed(b"".join(encode(data_frame(s)) for s in range(1, 21)))
        self.assertEqual((len(items), decoder.decoded), (1, 20))

    def test_a_limit_turns_runs_off(self) -> None:
        decoder = FrameDecoder(expect_preamble=False, runs=True)
        stream = b"".join(encode(data_frame(s)) for s in range(1, 4))
        self.assertEqual(decoder.feed(stream, limit=1), [data_frame(1)])
        (rest,) = decoder.feed(b"")
        self.assertEqual(rest.frames(), [data_frame(2), data_frame(3)])

    def test_a_partial_frame_ends_the_run_and_waits(self) -> None:
        decoder = FrameDecoder(expect_preamble=False, runs=True)
        stream = b"".join(encode(data_frame(s)) for s in range(1, 6))
        (first,) = decoder.feed(stream[:-10])
        self.assertEqual(first.count, 4)
        (last,) = decoder.feed(stream[-10:])
        self.assertEqual(last.frames(), [data_frame(5)])

    def test_bad_frames_after_a_run_are_still_refused(self) -> None:
        good = b"".join(encode(data_frame(s)) for s in range(1, 4))
        decoder = FrameDecoder(max_frame=1000, expect_preamble=False, runs=True)
        with self.assertRaisesRegex(ProtocolError, "exceeds the maximum frame size"):
            decoder.feed(good + encode(data_frame(4, b"y" * 2000)))
        unknown = bytearray(encode(data_frame(4)))
        unknown[4] = 200
        with self.assertRaisesRegex(ProtocolError, "unknown frame kind 200"):
            FrameDecoder(expect_preamble=False, runs=True).feed(good + bytes(unknown))

    def test_relayed_is_each_frame_reencoded_with_one_hop_less(self) -> None:
        for sizes in ([100] * 30, [0, 5, 500, 5, 0, 70]):
            frames = [data_frame(i + 1, b"z" * n, hops=6) for i, n in enumerate(sizes)]
            (run,) = runs_of(frames)
            self.assertEqual(run.relayed(), b"".join(wire.reencode(f, 5) for f in frames))
            self.assertEqual(run.buf[run.start + 5], 6)  # the received bytes stay as they were
        # A run of one (here a large message before a frame of another kind).
        big = data_frame(1, b"b" * 70_000, hops=3)
        ping = Frame(int(FrameKind.PING), 1, 0, 0, 0, 0, 0, b"")
        run, _ = runs_of([big, ping])
        self.assertEqual((type(run), run.count), (Run, 1))
        self.assertEqual(run.relayed(), wire.reencode(big, 2))

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([DATA, DATA, DATA, int(FrameKind.PING), int(FrameKind.LATEST)]),
                st.integers(1, 3),  # hops
                st.integers(1, 2),  # channel
                st.integers(1, 2),  # source
                st.sampled_from([0, 0, 0, 1, 60]),  # payload size
                st.sampled_from([b"", b"", b"", b"e"]),  # extension
            ),
            max_size=40,
        ),
        st.lists(st.integers(1, 400), max_size=12),
    )
    def test_runs_decode_exactly_the_frames_of_any_stream_cut_anywhere(
        self, specs: list, cuts: list[int]
    ) -> None:
        frames = [
            Frame(kind, hops, 0, chan, src, 0, seq, b"p" * size, ext)
            for seq, (kind, hops, chan, src, size, ext) in enumerate(specs)
        ]
        stream = wire.encode_preamble() + b"".join(map(encode, frames))
        plain, grouped = FrameDecoder(), FrameDecoder(runs=True)
        got_plain: list = []
        got_runs: list = []
        pos = 0
        for cut in [*cuts, len(stream)]:
            chunk, pos = stream[pos : pos + cut], pos + cut
            got_plain += plain.feed(chunk)
            items = grouped.feed(chunk)
            self.assertEqual(grouped.decoded if items else 0, wire.count_frames(items))
            for item in items:
                if type(item) is Run:
                    self.assertEqual(item.end - item.start, sum(
                        HEADER_SIZE + len(f.payload) for f in item.frames()
                    ))
            got_runs += items
        self.assertEqual(got_plain, frames)
        self.assertEqual(expand(got_runs), frames)


class ForwardingTests(MeshTestCase):
    def chain(self, config: ContextConfig | None = None, trace: bool = False) -> MemoryMesh:
        mesh = self.make_mesh(3, seed=3, config=config, trace=trace)
        mesh.link_chain()
        return mesh

    def test_a_burst_crosses_the_forwarder_once_each_in_order(self) -> None:
        mesh = self.chain()
        n0, n1, n2 = mesh
        far, near = SubChannel(n2, "bench", BINARY), SubChannel(n1, "bench", BINARY)
        got_far: list[bytes] = []
        far.subscribe(got_far.append)
        pub = PubChannel(n0, "bench", BINARY)
        mesh.settle()
        sent = [b"%d" % i * (i % 7) for i in range(600)]  # sizes vary, one turn
        upstream = n1.links[n0.node_id]
        before = upstream.frames_in
        for message in sent:
            pub.send(message)
        mesh.settle()
        # frames_in counts the frames inside runs (a few control frames besides).
        self.assertTrue(600 <= upstream.frames_in - before < 620, upstream.frames_in - before)
        self.assertEqual(got_far, sent)
        self.assertEqual([self.successResultOf(near.recv()) for _ in sent], sent)
        self.assertEqual(n1.counters["forwarded"], len(sent))
        self.assertEqual((far.missed, far.discarded, near.missed), (0, 0, 0))
        # Everything was credited back: nothing waits anywhere.
        self.assertEqual(n0.queued() + n1.queued(), 0)

    def test_sender_identity_survives_the_run_path(self) -> None:
        mesh = self.chain()
        n0, n1, n2 = mesh
        sub = IdentifiedSubChannel(n2, "who", BINARY)
        pub = PubChannel(n0, "who", BINARY)
        mesh.settle()
        for i in range(5):
            pub.send(b"%d" % i)
        mesh.settle()
        got = [self.successResultOf(sub.recv()) for _ in range(5)]
        self.assertEqual([r.value for r in got], [b"0", b"1", b"2", b"3", b"4"])
        self.assertEqual({r.node for r in got}, {n0.node_id})

    def inject(self, mesh: MemoryMesh, frames: list[Frame]) -> None:
        """Hand ``frames`` to n1 as one read from n0, as if n0 had sent them."""
        n0, n1, _ = mesh
        mesh.settle()
        n1.links[n0.node_id].dataReceived(b"".join(map(encode, frames)))
        mesh.settle()

    def test_the_hop_limit_stops_a_run_but_local_subscribers_get_it(self) -> None:
        mesh = self.chain(trace=True)
        n0, n1, n2 = mesh
        far = SubChannel(n2, "loop", BINARY)
        near = SubChannel(n1, "loop", BINARY)
        mesh.settle()
        chan, tag = far.channel_id, BINARY.tag
        frames = [data_frame(s, b"m", channel=chan, source=n0.node_id, tag=tag, hops=1)
                  for s in range(1, 11)]
        self.inject(mesh, frames)
        self.assertEqual(n1.counters["hop_limit"], 10)
        self.assertEqual(n1.counters["forwarded"], 0)
        self.assertEqual(far.pending, 0)
        self.assertEqual(near.pending, 10)
        # One hop left: forwarded, arriving with none to spare.
        traced = mesh.connection(n1, n2).frames
        del traced[:]
        self.inject(mesh, [f._replace(hops=2, seq=f.seq + 10) for f in frames])
        self.assertEqual(n1.counters["forwarded"], 10)
        self.assertEqual(far.pending, 10)
        seen = [f for _, f in traced if f.kind == DATA]
        self.assertEqual([(f.hops, f.seq) for f in seen], [(1, s) for s in range(11, 21)])

    def test_a_subscriber_sees_duplicates_and_gaps_inside_a_run(self) -> None:
        # Repair off: what the subscriber itself makes of a run (tests/test_repair.py
        # has what repair makes of gaps).
        mesh = self.chain(ContextConfig(retention_bytes=0))
        n0, n1, _ = mesh
        sub = SubChannel(n1, "gaps", BINARY)
        mesh.settle()
        seqs = [1, 2, 2, 3, 6, 7, 5, 8]
        self.inject(mesh, [
            data_frame(s, b"%d" % s, channel=sub.channel_id, source=n0.node_id, tag=BINARY.tag)
            for s in seqs
        ])
        got = [self.successResultOf(sub.recv()) for _ in range(sub.pending)]
        self.assertEqual(got, [b"1", b"2", b"3", b"6", b"7", b"8"])
        self.assertEqual((sub.discarded, sub.missed, sub.received), (2, 2, 6))

    def test_a_run_of_the_wrong_type_is_refused_with_a_clear_error(self) -> None:
        mesh = self.chain()
        n0, n1, _ = mesh
        sub = SubChannel(n1, "typed", BINARY)
        mesh.settle()
        self.inject(mesh, [
            data_frame(s, b"v", channel=sub.channel_id, source=n0.node_id, tag=12345)
            for s in (1, 2, 3)
        ])
        self.assertEqual(sub.pending, 0)
        self.assertIn("use the same message type on both ends", str(sub.errors[-1]))

    def test_credit_paces_a_burst_through_the_forwarder_without_loss(self) -> None:
        window = 8 * 1024
        mesh = self.chain(ContextConfig(flow_window=window, publish_backlog=1 << 20))
        n0, n1, n2 = mesh
        sub = SubChannel(n2, "paced", BINARY)
        pub = PubChannel(n0, "paced", BINARY)
        mesh.settle()
        sent = [b"%05d" % i + b"." * 200 for i in range(400)]  # ~100 KiB: 12 windows
        for message in sent:
            pub.send(message)
        mesh.settle()
        # Nobody took anything: the forwarder holds at most about a window.
        self.assertLess(n1.queued(), 3 * window)
        self.assertLess(sub.pending * 244, 3 * window)
        got: list[bytes] = []
        for _ in range(1000):
            while sub.pending:
                got.append(self.successResultOf(sub.recv()))
            if not mesh.settle() and not sub.pending:
                break
        self.assertEqual(got, sent)
        self.assertEqual((sub.missed, n1.counters["flow_dropped"]), (0, 0))
