"""SSE and NDJSON framing: complete payloads out, whatever the chunk boundaries."""

from hypothesis import given, settings
from hypothesis import strategies as st

from translators.framing import NDJSONDecoder, SSEDecoder, dumps, loads


def decode_in_pieces(decoder, data: bytes, cuts: list[int]) -> list[bytes]:
    payloads: list[bytes] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        payloads += decoder.feed(data[start:cut])
        start = cut
    return payloads + decoder.finish()


SSE_STREAM = (
    b": keep-alive comment\n"
    b'data: {"a": "h\xc3\xa9llo"}\n\n'
    b"event: message\r\n"
    b'data: {"b":\r\n'
    b"data: 2}\r\n\r\n"
    b'data:{"c":3}\r\r'
    b"data: [DONE]\n\n"
)
SSE_PAYLOADS = [b'{"a": "h\xc3\xa9llo"}', b'{"b":\n2}', b'{"c":3}', b"[DONE]"]


def test_sse_decoder_yields_data_of_each_event_across_line_ending_styles():
    assert decode_in_pieces(SSEDecoder(), SSE_STREAM, []) == SSE_PAYLOADS


def test_sse_decoder_gives_the_same_payloads_split_at_every_byte():
    for cut in range(len(SSE_STREAM) + 1):
        assert decode_in_pieces(SSEDecoder(), SSE_STREAM, [cut]) == SSE_PAYLOADS, cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SSE_STREAM)), max_size=30))
def test_sse_decoder_gives_the_same_payloads_for_any_split(cuts):
    assert decode_in_pieces(SSEDecoder(), SSE_STREAM, cuts) == SSE_PAYLOADS


# As engines write: each read whole `data: ` events, newlines only; the odd comment or multi-line event among them.
ENGINE_SSE_READS = [
    b'data: {"a":1}\n\n',
    b'data: {"b":2}\n\ndata: {"c":"\xe2\x82\xac"}\n\n',
    b": ping\n\ndata: {\"d\":\ndata: 4}\n\n",
    b"data: [DONE]\n\n",
]
ENGINE_SSE_PAYLOADS = [b'{"a":1}', b'{"b":2}', b'{"c":"\xe2\x82\xac"}', b'{"d":\n4}', b"[DONE]"]


def test_sse_decoder_reads_whole_engine_events_read_by_read():
    decoder = SSEDecoder()
    assert [payload for data in ENGINE_SSE_READS for payload in decoder.feed(data)] == ENGINE_SSE_PAYLOADS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(b"".join(ENGINE_SSE_READS))), max_size=10))
def test_sse_decoder_reads_engine_events_the_same_cut_anywhere(cuts):
    assert decode_in_pieces(SSEDecoder(), b"".join(ENGINE_SSE_READS), cuts) == ENGINE_SSE_PAYLOADS


def test_json_beyond_orjson_is_read_and_written_the_standard_way():
    assert loads(b'{"seed": 123456789012345678901234567890, "x": NaN}')["seed"] == 123456789012345678901234567890
    assert dumps({"seed": 2**70, "text": "h\xe9"}) == b'{"seed":1180591620717411303424,"text":"h\xc3\xa9"}'
    assert dumps({1: "a"}) == b'{"1":"a"}'


def test_sse_decoder_waits_for_a_complete_event():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"x": 1}\n') == []
    assert decoder.feed(b"\n") == [b'{"x": 1}']


def test_sse_decoder_delivers_an_unterminated_last_event_at_finish():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.finish() == [b"[DONE]"]


NDJSON_STREAM = b'{"a":"\xe2\x82\xac"}\n\n{"b":2}\r\n   \n{"c":3}'
NDJSON_PAYLOADS = [b'{"a":"\xe2\x82\xac"}', b'{"b":2}', b'{"c":3}']


def test_ndjson_decoder_gives_the_same_lines_split_at_every_byte():
    for cut in range(len(NDJSON_STREAM) + 1):
        assert decode_in_pieces(NDJSONDecoder(), NDJSON_STREAM, [cut]) == NDJSON_PAYLOADS, cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(NDJSON_STREAM)), max_size=30))
def test_ndjson_decoder_gives_the_same_lines_for_any_split(cuts):
    assert decode_in_pieces(NDJSONDecoder(), NDJSON_STREAM, cuts) == NDJSON_PAYLOADS
