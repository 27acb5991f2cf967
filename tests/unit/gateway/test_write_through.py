"""A streamed answer's pieces go straight to the caller once mitmproxy has sent the head and passed what the relay
carried, in order, and its end goes the relay's way behind anything still on it."""

from __future__ import annotations

import asyncio
import socket

from addons.splice import LAST_CHUNK, BackendStream, ResponseHead, Splice, dechunk
from addons.write_through import CALLER_BUFFER_HIGH, CallerWriter

HEAD = ResponseHead(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"})


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Transport:
    """What the splice and the caller writer are given of a connection: its writes, and whether it reads."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.reading = True
        self.closed = False
        self.buffered = 0  # bytes the kernel has not yet taken

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered


class CallerConnection(Transport):
    """The caller's end as mitmproxy holds it (an asyncio StreamWriter): `drain` waits for `drained`."""

    def __init__(self) -> None:
        super().__init__()
        self.transport = self
        self.drained = asyncio.Event()

    async def drain(self) -> None:
        await self.drained.wait()


def translated(data: bytes) -> list[bytes]:
    """A stand-in translator: each piece in upper case, and its own end."""
    return [data.upper()] if data else [b"END"]


def streaming():
    """A splice whose backend has answered its head, and a caller writer for it: (backend, relay, splice, caller,
    caller's connection, mitmproxy's idle-timeout activity count)."""
    backend = BackendStream()
    backend.head, backend.transport = HEAD, Transport()
    relay, connection, activity = Transport(), CallerConnection(), []
    splice = Splice(backend, relay, 5, lambda reason: None)
    splice.start()
    caller = CallerWriter(translated, connection, lambda: activity.append(1), splice)
    splice.caller = caller
    return backend, relay, splice, caller, connection, activity


async def next_turn() -> None:
    await asyncio.sleep(0)


def test_pieces_go_by_the_relay_until_one_has_passed_mitmproxy_then_straight_in_order():
    async def scenario():
        backend, relay, splice, caller, connection, activity = streaming()
        backend.data_received(chunk(b"a"))  # before mitmproxy has sent the head: the relay's way
        backend.data_received(chunk(b"b"))
        assert caller.through_mitmproxy(b"a") == [b"A"]  # mitmproxy writes the head, then this
        backend.data_received(chunk(b"c"))  # b is still on the relay: c waits behind it
        assert connection.writes == []
        assert caller.through_mitmproxy(b"b") == [b"B"]
        assert connection.writes == []  # not before mitmproxy has written B, on this turn of the loop
        await next_turn()
        backend.data_received(chunk(b"d") + chunk(b"e"))  # what came together goes as one
        backend.data_received(b"0\r\n\r\n")
        assert caller.through_mitmproxy(b"") == []  # the end went straight: mitmproxy only ends the framing
        return relay.writes, connection.writes, activity, backend.transport.closed

    relay_writes, caller_writes, activity, backend_closed = asyncio.run(scenario())
    assert relay_writes[1:] == [chunk(b"a"), chunk(b"b"), LAST_CHUNK]
    assert caller_writes == [chunk(b"C"), chunk(b"DE"), chunk(b"END")]
    assert len(activity) == 3 and backend_closed  # each write keeps mitmproxy's idle timeout from closing the caller


def test_an_end_while_relayed_pieces_are_in_flight_goes_the_relays_way_behind_them():
    async def scenario():
        backend, relay, splice, caller, connection, _ = streaming()
        backend.data_received(chunk(b"a"))
        backend.data_received(chunk(b"b"))
        caller.through_mitmproxy(b"a")
        backend.data_received(chunk(b"c") + b"0\r\n\r\n")  # c waits behind b, then the end comes
        return relay.writes, connection.writes, caller.through_mitmproxy(b"b"), caller.through_mitmproxy(b"c"), \
            caller.through_mitmproxy(b"")

    relay_writes, caller_writes, *passed = asyncio.run(scenario())
    assert relay_writes[1:] == [chunk(b"a"), chunk(b"b"), chunk(b"c"), LAST_CHUNK]
    assert caller_writes == [] and passed == [[b"B"], [b"C"], [b"END"]]  # the translator's end, once


def test_a_backend_that_breaks_off_ends_the_callers_stream_straight():
    async def scenario():
        backend, relay, splice, caller, connection, _ = streaming()
        reasons = []
        splice.on_broken = reasons.append
        backend.data_received(chunk(b"a"))
        caller.through_mitmproxy(b"a")
        backend.data_received(chunk(b"b") + b"3\r\nc")  # a chunk cut short
        backend.connection_lost(ConnectionResetError())
        return relay.writes, connection.writes, reasons

    relay_writes, caller_writes, reasons = asyncio.run(scenario())
    assert relay_writes[1:] == [chunk(b"a"), LAST_CHUNK]
    assert caller_writes == [chunk(b"B"), chunk(b"END")] and "ConnectionResetError" in reasons[0]


def test_a_caller_that_reads_slowly_pauses_its_backend_until_its_connection_drains():
    async def scenario():
        backend, relay, splice, caller, connection, _ = streaming()
        backend.data_received(chunk(b"a"))
        caller.through_mitmproxy(b"a")
        connection.buffered = CALLER_BUFFER_HIGH + 1
        backend.data_received(chunk(b"b"))
        await next_turn()
        paused = not backend.transport.reading
        connection.drained.set()
        await next_turn()
        await next_turn()
        return paused, backend.transport.reading

    paused, reading_again = asyncio.run(scenario())
    assert paused and reading_again


def test_nothing_is_written_to_a_caller_that_has_left():
    async def scenario():
        backend, relay, splice, caller, connection, _ = streaming()
        backend.data_received(chunk(b"a"))
        caller.through_mitmproxy(b"a")
        connection.closed = True
        backend.data_received(chunk(b"b") + b"0\r\n\r\n")
        return connection.writes

    assert asyncio.run(scenario()) == []


def test_a_caller_that_stops_reading_holds_its_backend_back_then_gets_every_piece_in_order():
    """Over a real connection: its kernel buffers fill, then the writer's, and the backend is paused until the
    caller reads again."""
    pieces = [b"%07d;" % number for number in range(60_000)]  # 480 kB, far beyond the buffers

    async def scenario():
        backend, relay, splice, _, _, _ = streaming()
        callers_end, ours = socket.socketpair()
        for end, option in ((callers_end, socket.SO_RCVBUF), (ours, socket.SO_SNDBUF)):
            end.setsockopt(socket.SOL_SOCKET, option, 16 * 2**10)
        reader, writer = await asyncio.open_connection(sock=ours)
        caller = CallerWriter(translated, writer, lambda: None, splice)
        splice.caller = caller
        backend.data_received(chunk(pieces[0]))
        caller.through_mitmproxy(pieces[0])  # the head is out: the rest goes straight
        fed, paused_at = 1, None
        callers_reader, _ = await asyncio.open_connection(sock=callers_end)
        received = bytearray()
        while fed < len(pieces) or not received.endswith(chunk(b"END")):
            if fed < len(pieces) and backend.transport.reading:  # a paused transport delivers nothing
                backend.data_received(chunk(pieces[fed]))
                fed += 1
                if fed == len(pieces):
                    backend.data_received(b"0\r\n\r\n")
                await asyncio.sleep(0)
                continue
            paused_at = paused_at or fed
            received += await callers_reader.read(2**16)  # the caller reads again
        writer.close()
        return paused_at, bytes(received)

    paused_at, received = asyncio.run(scenario())
    assert paused_at is not None and paused_at < len(pieces) // 2
    assert dechunk(received + b"0\r\n\r\n") == b"".join(piece.upper() for piece in pieces[1:]) + b"END"
