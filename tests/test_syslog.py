"""Syslog forwarding: RFC 5424 messages checked by small receivers on 127.0.0.1 (UDP, TCP, TLS)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pushsite.errors import ConfigError
from pushsite.model import LogLine
from pushsite.service.syslog import SD_ID, SyslogSink, format_rfc5424
from support.service import wait_for

BOM = b"\xef\xbb\xbf"
DEPLOYMENT = "01jd5m7k8q0000000000000000"


# a small RFC 5424 parser, written from the RFC's ABNF ----------------------------------------

_HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) (?P<timestamp>\S+) (?P<hostname>\S+) "
    rb"(?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
)


def parse(message: bytes) -> dict[str, Any]:
    """Split a message into its header fields, structured data and MSG; fail on bad syntax."""
    match = _HEADER.match(message)
    assert match, message
    result: dict[str, Any] = {k: v.decode("ascii") for k, v in match.groupdict().items()}
    for name in ("hostname", "app", "procid", "msgid"):
        assert all(33 <= ord(c) <= 126 for c in result[name]), result[name]
    rest = message[match.end() :]
    sd: dict[str, list[tuple[str, str]]] = {}
    if rest.startswith(b"-"):
        pos = 1
    else:
        pos = 0
        while pos < len(rest) and rest[pos : pos + 1] == b"[":
            pos = _parse_element(rest, pos + 1, sd)
        assert pos > 0, message
    result["sd"] = sd
    if pos < len(rest):
        assert rest[pos : pos + 1] == b" ", message
        result["msg"] = rest[pos + 1 :]
    else:
        result["msg"] = b""
    return result


def _parse_element(data: bytes, pos: int, sd: dict[str, list[tuple[str, str]]]) -> int:
    end = pos
    while data[end : end + 1] not in (b" ", b"]"):
        end += 1
    sd_id = data[pos:end].decode("ascii")
    assert 1 <= len(sd_id) <= 32 and sd_id not in sd
    params: list[tuple[str, str]] = []
    pos = end
    while data[pos : pos + 1] == b" ":
        eq = data.index(b"=", pos)
        name = data[pos + 1 : eq].decode("ascii")
        assert 1 <= len(name) <= 32 and not set(name) & set(' ="]'), name
        assert data[eq + 1 : eq + 2] == b'"'
        pos = eq + 2
        value = bytearray()
        while data[pos : pos + 1] != b'"':
            if data[pos : pos + 1] == b"\\" and data[pos + 1 : pos + 2] in (b'"', b"\\", b"]"):
                pos += 1
            else:
                assert data[pos : pos + 1] != b"]", "an unescaped ] inside a PARAM-VALUE"
            value += data[pos : pos + 1]
            pos += 1
        params.append((name, value.decode("utf-8")))
        pos += 1
    assert data[pos : pos + 1] == b"]", data[pos:]
    sd[sd_id] = params
    return pos + 1


# receivers ------------------------------------------------------------------------------------



class UdpReceiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65535))
            except TimeoutError:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class TcpReceiver:
    """Accepts connections and splits the stream by octet counting (RFC 6587 section 3.4.1)."""

    def __init__(
        self, *, port: int = 0, tls: ssl.SSLContext | None = None, sock: socket.socket | None = None
    ) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
        sock.listen()
        sock.settimeout(0.1)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.tls = tls
        self.messages: list[bytes] = []
        self.problems: list[str] = []
        self.connections = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn.settimeout(5)
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    self.problems.append(f"handshake: {exc}")
                    return
            conn.settimeout(0.1)
            buffer = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if not length.isdigit() or length.startswith(b"0"):
                        self.problems.append(f"bad frame: {buffer[:40]!r}")
                        return
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[: int(length)])
                    buffer = rest[int(length) :]
            if buffer:
                self.problems.append(f"left over: {buffer[:40]!r}")
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        issuer_key: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("pushsite test CA", ca_key, None, ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = cert("localhost", server_key, ca_cert.subject, ca_key, False)
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_receiver(pki: dict[str, Path]) -> Iterator[TcpReceiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["cert"], pki["key"])
    receiver = TcpReceiver(tls=context)
    try:
        yield receiver
    finally:
        receiver.stop()


def make_line(
    message: str = "read the bundle", *, stage: str = "read", level: str = "info", **fields: Any
) -> LogLine:
    return LogLine(DEPLOYMENT, 1764198150.123456, level, stage, message, fields)


def params(parsed: dict[str, Any]) -> dict[str, str]:
    return dict(parsed["sd"][SD_ID])


# formatting -----------------------------------------------------------------------------------


def test_header_fields_follow_rfc5424() -> None:
    line = make_line("published 12 files", level="warning", stage="store")
    parsed = parse(format_rfc5424(line, "blog", "build-1.example.com", 4242))

    assert parsed["pri"] == str(1 * 8 + 4)  # facility user, severity warning
    assert parsed["version"] == "1"
    stamp = dt.datetime.fromisoformat(parsed["timestamp"])
    assert parsed["timestamp"].endswith("Z")
    assert stamp == dt.datetime(2025, 11, 26, 23, 2, 30, 123456, tzinfo=dt.UTC)
    assert parsed["hostname"] == "build-1.example.com"
    assert parsed["app"] == "pushsite"
    assert parsed["procid"] == "4242"
    assert parsed["msgid"] == "store"
    assert params(parsed) == {"deployment": DEPLOYMENT, "site": "blog"}
    assert parsed["msg"] == BOM + b"published 12 files"


@pytest.mark.parametrize(
    ("level", "facility", "pri"),
    [("debug", 1, 15), ("info", 1, 14), ("warning", 1, 12), ("error", 1, 11), ("info", 16, 134)],
)
def test_pri_combines_facility_and_severity(level: str, facility: int, pri: int) -> None:
    line = make_line(level=level)
    parsed = parse(format_rfc5424(line, "blog", "h", 1, facility=facility))
    assert parsed["pri"] == str(pri)


def test_structured_data_escapes_quote_backslash_and_bracket() -> None:
    line = make_line(path='a"b\\c]d', count=3, ok=True, extra={"k": [1, 2]}, none=None)
    data = format_rfc5424(line, "blog", "h", 1)

    assert b'path="a\\"b\\\\c\\]d"' in data
    assert params(parse(data)) == {
        "deployment": DEPLOYMENT,
        "site": "blog",
        "path": 'a"b\\c]d',
        "count": "3",
        "ok": "true",
        "extra": '{"k":[1,2]}',
        "none": "",
    }


def test_unicode_message_and_values_are_utf8_after_a_bom() -> None:
    line = make_line("déployé ✓ 日本", name="résumé.html")
    parsed = parse(format_rfc5424(line, "blog", "h", 1))
    assert parsed["msg"] == BOM + "déployé ✓ 日本".encode()
    assert params(parsed)["name"] == "résumé.html"


def test_header_and_param_names_are_kept_to_printable_ascii() -> None:
    stage = "stage with spaces, é, and a name longer than thirty-two characters"
    line = make_line(stage=stage, **{"odd name=x": 1})
    parsed = parse(format_rfc5424(line, "blog", "", 7))

    assert parsed["hostname"] == "-"
    assert len(parsed["msgid"]) <= 32
    assert parsed["msgid"].startswith("stage_with_spaces")
    assert params(parsed)["odd_name_x"] == "1"


def test_a_field_named_like_the_deployment_does_not_hide_it() -> None:
    parsed = parse(format_rfc5424(make_line(deployment="other", site="x"), "blog", "h", 1))
    assert params(parsed) == {
        "deployment": DEPLOYMENT,
        "site": "blog",
        "deployment_": "other",
        "site_": "x",
    }


def test_long_message_is_cut_to_fit_at_a_character_boundary() -> None:
    data = format_rfc5424(make_line("é" * 5000), "blog", "h", 1, max_bytes=2048)
    assert len(data) <= 2048
    msg = parse(data)["msg"]
    assert msg.startswith(BOM)
    assert set(msg[3:].decode("utf-8")) == {"é"}
    assert len(msg) > 1000


def test_huge_fields_are_left_out_rather_than_cut_mid_structure() -> None:
    data = format_rfc5424(make_line("short", blob="x" * 4000), "blog", "h", 1, max_bytes=2048)
    assert len(data) <= 2048
    assert params(parse(data)) == {"deployment": DEPLOYMENT, "site": "blog"}


# URLs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://logs.example.com:514",
        "udp://:514",
        "tcp://logs.example.com:notaport",
        "tcp://logs.example.com:70000",
        "udp://logs.example.com:514/path",
        "udp://logs.example.com:514?ca=/etc/ssl/ca.pem",
        "tcp://logs.example.com:514?colour=blue",
        "tcp+tls://logs.example.com:6514?ca=/nonexistent/ca.pem",
        "tcp+tls://logs.example.com:6514?insecure=maybe",
        "udp://logs.example.com:514?facility=nonsense",
    ],
)
def test_bad_url_is_a_config_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        SyslogSink.from_url(url)
    assert url in str(info.value)


def test_good_urls_pick_transport_port_and_facility(pki: dict[str, Path]) -> None:
    udp = SyslogSink.from_url("udp://127.0.0.1:5514?facility=local3")
    tcp = SyslogSink.from_url("tcp://logs.example.com")
    tls = SyslogSink.from_url(f"tcp+tls://localhost?ca={pki['ca']}")
    assert (udp.transport, udp.host, udp.port) == ("udp", "127.0.0.1", 5514)
    assert parse(format_rfc5424(make_line(), "b", "h", 1, facility=19))["pri"] == "158"
    assert (tcp.transport, tcp.port) == ("tcp", 514)
    assert (tls.transport, tls.port) == ("tcp+tls", 6514)
    for sink in (udp, tcp, tls):
        sink.close()


# delivery -------------------------------------------------------------------------------------


def test_udp_delivers_every_line_as_one_datagram() -> None:
    receiver = UdpReceiver()
    sink = SyslogSink.from_url(f"udp://127.0.0.1:{receiver.port}")
    try:
        for n in range(20):
            sink.emit(make_line(f"line {n}", stage="store", n=n), "blog")
        assert sink.flush()
        wait_for("len(receiver.messages) == 20", lambda: len(receiver.messages) == 20)
    finally:
        sink.close()
        receiver.stop()

    parsed = [parse(m) for m in receiver.messages]
    assert [p["msg"] for p in parsed] == [BOM + f"line {n}".encode() for n in range(20)]
    assert {p["hostname"] for p in parsed} == {socket.gethostname()}
    assert {p["procid"] for p in parsed} == {str(os.getpid())}
    assert sink.sent == 20 and sink.errors == 0 and sink.dropped == 0


def test_tcp_frames_by_octet_count_so_newlines_survive() -> None:
    receiver = TcpReceiver()
    sink = SyslogSink.from_url(f"tcp://127.0.0.1:{receiver.port}")
    messages = ["first line\nsecond line", "1234 looks like a length", "", "é" * 300]
    try:
        for text in messages:
            sink.emit(make_line(text), "blog")
        sink.close()
        wait_for("every message", lambda: len(receiver.messages) == len(messages))
    finally:
        receiver.stop()

    assert receiver.problems == []
    assert [parse(m)["msg"] for m in receiver.messages] == [BOM + t.encode() for t in messages]
    assert receiver.connections == 1


def test_tls_with_a_private_ca(tls_receiver: TcpReceiver, pki: dict[str, Path]) -> None:
    sink = SyslogSink.from_url(f"tcp+tls://127.0.0.1:{tls_receiver.port}?ca={pki['ca']}")
    try:
        sink.emit(make_line("over TLS", stage="activate", url="http://blog.localhost/"), "blog")
        sink.emit(make_line("second"), "blog")
        assert sink.flush()
        wait_for("len(tls_receiver.messages) == 2", lambda: len(tls_receiver.messages) == 2)
    finally:
        sink.close()

    first = parse(tls_receiver.messages[0])
    assert first["msgid"] == "activate"
    assert params(first)["url"] == "http://blog.localhost/"
    assert first["msg"] == BOM + b"over TLS"
    assert tls_receiver.problems == [] and sink.errors == 0


def test_untrusted_collector_is_counted_and_warned_once_never_raised(
    tls_receiver: TcpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = SyslogSink(
        "tcp+tls", "127.0.0.1", tls_receiver.port, retry_delay=0.01, max_retry_delay=0.02
    )
    try:
        for n in range(3):
            sink.emit(make_line(f"line {n}"), "blog")
        wait_for("sink.errors >= 3", lambda: sink.errors >= 3)
    finally:
        sink.close()

    assert tls_receiver.messages == []
    assert sink.sent == 0 and sink.dropped == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "syslog" in line]
    assert len(warnings) == 1
    assert f"tcp+tls://127.0.0.1:{tls_receiver.port}" in warnings[0]
    assert "CERTIFICATE_VERIFY_FAILED" in warnings[0]


def test_reconnects_when_the_collector_comes_back(capsys: pytest.CaptureFixture[str]) -> None:
    first = TcpReceiver()
    port = first.port
    sink = SyslogSink("tcp", "127.0.0.1", port, retry_delay=0.01, max_retry_delay=0.05)
    second: TcpReceiver | None = None
    try:
        sink.emit(make_line("before"), "blog")
        wait_for("len(first.messages) == 1", lambda: len(first.messages) == 1)
        first.stop()  # the collector restarts: connection and listener gone

        sink.emit(make_line("while down"), "blog")
        wait_for("sink.errors >= 2", lambda: sink.errors >= 2)
        second = TcpReceiver(port=port)
        sink.emit(make_line("after"), "blog")
        wait_for("len(second.messages) == 2", lambda: len(second.messages) == 2)
    finally:
        sink.close()
        if second is not None:
            second.stop()

    assert [parse(m)["msg"] for m in second.messages] == [BOM + b"while down", BOM + b"after"]
    assert sink.sent == 3 and sink.dropped == 0
    assert capsys.readouterr().err.count("cannot send logs to syslog") == 1


def test_full_queue_drops_the_oldest_lines_and_counts_them() -> None:
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
    port = reserved.getsockname()[1]
    sink = SyslogSink("tcp", "127.0.0.1", port, queue_size=5, retry_delay=3600)
    receiver: TcpReceiver | None = None
    try:
        sink.emit(make_line("line 0"), "blog")
        wait_for("sink.errors == 1", lambda: sink.errors == 1)  # now waiting an hour to retry
        for n in range(1, 11):
            sink.emit(make_line(f"line {n}"), "blog")
        assert sink.dropped == 6

        receiver = TcpReceiver(sock=reserved)
        sink.close()  # wakes the sender for a last try
        wait_for("len(receiver.messages) == 5", lambda: len(receiver.messages) == 5)
    finally:
        sink.close()
        if receiver is not None:
            receiver.stop()
        else:
            reserved.close()

    assert [parse(m)["msg"] for m in receiver.messages] == [
        BOM + f"line {n}".encode() for n in range(6, 11)
    ]
    assert sink.sent == 5 and sink.dropped == 6


def test_emit_after_close_is_counted_not_raised() -> None:
    sink = SyslogSink.from_url("udp://127.0.0.1:9")
    sink.close()
    sink.emit(make_line(), "blog")
    assert sink.dropped == 1


def test_insecure_tls_skips_the_certificate_check_for_tests(tls_receiver: TcpReceiver) -> None:
    sink = SyslogSink.from_url(f"tcp+tls://127.0.0.1:{tls_receiver.port}?insecure=1")
    try:
        sink.emit(make_line("unchecked"), "blog")
        assert sink.flush()
        wait_for("len(tls_receiver.messages) == 1", lambda: len(tls_receiver.messages) == 1)
    finally:
        sink.close()
    assert parse(tls_receiver.messages[0])["msg"] == BOM + b"unchecked"


def test_a_line_that_cannot_be_formatted_is_dropped_and_the_rest_still_go() -> None:
    receiver = UdpReceiver()
    sink = SyslogSink("udp", "127.0.0.1", receiver.port)
    try:
        sink.emit(LogLine(DEPLOYMENT, float("nan"), "info", "read", "bad time"), "blog")
        sink.emit(make_line("good"), "blog")
        assert sink.flush()
        wait_for("len(receiver.messages) == 1", lambda: len(receiver.messages) == 1)
    finally:
        sink.close()
        receiver.stop()
    assert parse(receiver.messages[0])["msg"] == BOM + b"good"
    assert sink.dropped == 1 and sink.sent == 1
