"""DKIM body canonicalization in pieces (engine/dkim/canonical.py `BodyCanonicalizer`,
`BodyHash`), shared by the lean verifier and the relay's streamed signer (issue 7 item 10): the
digest of a body fed in pieces cut anywhere (between CR and LF, inside white space runs and
trailing empty lines, l= inside a piece) equals the digest of the whole body canonicalized at
once, which equals dkimpy's canonicalization; and the verifier's `Message` gives dkimpy's header
fields and body (dkimpy's own `rfc822_parse`) without copying the body whole."""

from __future__ import annotations

import hashlib
import random

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple

from engine.dkim import canonical, dkimpy_patch
from engine.dkim import message as dkim_message
from engine.dkim.canonical import BodyHash, canonical_body
from engine.dkim.message import Message

ALPHABET = [b"a", b"Z", b" ", b"  ", b"\t", b"\r", b"\n", b"\r\n", b"\r\n", b"\r\n\r\n", b" \r\n", b"x y"]
DKIMPY_RFC822_PARSE = dkimpy_patch._RFC822_PARSE  # dkimpy's own, whether or not the speed-up is installed
REFERENCE = {b"simple": Simple.canonicalize_body, b"relaxed": dkimpy_patch._RELAXED_BODY}  # dkimpy's own


def random_body(rng: random.Random, size: int = 40) -> bytes:
    return b"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, size)))


def hash_in_pieces(body: bytes, cuts: list[int], algorithm: bytes, length: int | None = None) -> bytes:
    hasher = BodyHash("sha256", algorithm, length)
    previous = 0
    for cut in [*cuts, len(body)]:
        piece = body[previous:cut]
        hasher.update(memoryview(piece) if cut % 2 else piece)  # both kinds the callers give
        previous = cut
    return hasher.digest()


@pytest.mark.parametrize("algorithm", [b"simple", b"relaxed"])
def test_whole_canonicalization_is_dkimpys(algorithm: bytes) -> None:
    rng = random.Random(6376)
    for _ in range(3000):
        body = random_body(rng)
        assert canonical_body(body, algorithm) == REFERENCE[algorithm](body), body


def test_dkimpy_uses_the_one_canonicalization_once_installed() -> None:
    dkimpy_patch.install()
    assert Relaxed.canonicalize_body(b"a  b \r\n\r\n") == b"a b\r\n"
    assert Relaxed.canonicalize_body is dkimpy_patch.relaxed_body


@pytest.mark.parametrize("algorithm", [b"simple", b"relaxed"])
def test_every_single_cut_gives_the_whole_bodys_hash(algorithm: bytes) -> None:
    rng = random.Random(3443)
    bodies = [b"", b"\r\n", b"\r\n\r\n", b" \r\n\t\r\n", b"a\r", b"a \r\n\r\n \r", b"end without CRLF  \t",
              b"x\r\r\n\r\n", b"line \t \r\n\r\n\r\n\r\nmore\r\n \r\n"]
    bodies += [random_body(rng) for _ in range(300)]
    for body in bodies:
        want = hashlib.sha256(canonical_body(body, algorithm)).digest()
        for cut in range(len(body) + 1):
            assert hash_in_pieces(body, [cut], algorithm) == want, (body, cut)


@pytest.mark.parametrize("algorithm", [b"simple", b"relaxed"])
def test_many_cuts_and_l_equals_cut_inside_a_piece(algorithm: bytes) -> None:
    rng = random.Random(8463)
    for _ in range(2000):
        body = random_body(rng, 80)
        whole = canonical_body(body, algorithm)
        cuts = sorted(rng.sample(range(len(body) + 1), min(len(body) + 1, rng.randrange(0, 12))))
        assert hash_in_pieces(body, cuts, algorithm) == hashlib.sha256(whole).digest(), (body, cuts)
        length = rng.randrange(0, len(whole) + 4)  # also past the end: the whole, as dkimpy's body[:l]
        assert hash_in_pieces(body, cuts, algorithm, length) == hashlib.sha256(whole[:length]).digest()


@pytest.mark.parametrize("span", [1, 2, 3, 5])
def test_relaxed_spans_cut_anywhere_give_the_same_hash(monkeypatch: pytest.MonkeyPatch, span: int) -> None:
    """"relaxed" canonicalizes a large piece RELAXED_SPAN bytes at a time (made tiny here)."""
    rng = random.Random(span)
    bodies = [random_body(rng, 80) for _ in range(500)]
    bodies += [b"a" + b" \t" * 5000 + b"\r\n", b"a" + b" " * 9999 + b"b\r\n", b" " * 9999, b"x \r \r\n\t\r"]
    wants = [hashlib.sha256(canonical_body(body, b"relaxed")).digest() for body in bodies]
    monkeypatch.setattr(canonical, "RELAXED_SPAN", span)
    for body, want in zip(bodies, wants, strict=True):
        assert hash_in_pieces(body, [], b"relaxed") == want, body
        assert hashlib.sha256(canonical_body(body, b"relaxed")).digest() == want, body


def test_a_large_body_in_pieces_is_hashed_as_a_whole() -> None:
    rng = random.Random(1)
    line = [b"The figures  are\tattached. \t\r\n", b"\r\n", b"plain line\r\n", b" \r\n", b"a\r", b"\n"]
    body = b"".join(rng.choice(line) for _ in range(60_000)) + b"\r\n\r\n \r\n"
    for algorithm in (b"simple", b"relaxed"):
        want = hashlib.sha256(canonical_body(body, algorithm)).digest()
        cuts = list(range(0, len(body), 65_537))
        assert hash_in_pieces(body, cuts, algorithm) == want


def test_message_parse_gives_dkimpys_fields_and_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """Header fields as `dkim.rfc822_parse` gives them; the body pieces join to its body (bare LFs
    made CRLF, across piece ends too), with small pieces so that every message has several."""
    monkeypatch.setattr(dkim_message, "BODY_PIECE", 7)
    rng = random.Random(5322)
    heads = [b"From: a@b\r\n", b"To: c@d\n", b"Subject: x\r\n y\r\n", b"X: \r\r\n", b"\r\n", b"\n", b"From x\n"]
    for _ in range(3000):
        raw = b"".join(rng.choice(heads) for _ in range(rng.randrange(0, 6))) + random_body(rng)
        try:
            headers, body = DKIMPY_RFC822_PARSE(raw)
        except (dkim.MessageFormatError, IndexError) as exc:  # IndexError: a leading continuation line
            with pytest.raises(type(exc)):
                Message.parse(raw)
            continue
        message = Message.parse(raw)
        assert message.headers == headers, raw
        pieces = list(message.body_pieces())
        assert b"".join(pieces) == body, raw
        assert not any(bytes(piece).endswith(b"\r") for piece in pieces[:-1]), raw


def test_message_body_is_not_copied_when_its_line_ends_are_crlf() -> None:
    raw = b"From: a@b\r\n\r\n" + b"a line of text\r\n" * 200_000
    pieces = list(Message.parse(raw).body_pieces())
    assert len(pieces) == 4 and all(isinstance(piece, memoryview) and piece.obj is raw for piece in pieces)
