"""Topics ``<kind>/<peer>/<space>``: formatting, parsing, the handshake, space-name checks."""

from __future__ import annotations

import pytest

from p2pgame.bus import HANDSHAKE as BUS_HANDSHAKE
from p2pgame.bus.topics import HANDSHAKE, KINDS, Topic, TopicError, check_space_names


@pytest.mark.parametrize(
    "kind, peer, space",
    [("samples", 0, "x"), ("samples", 3, "hvae"), ("params", 12, "D"), ("params", 7, "mu"),
     ("samples", 999, "a_b.c-1")],
)
def test_format_parse_round_trip(kind, peer, space):
    t = Topic(kind, peer, space)
    text = str(t)
    assert text == f"{kind}/{peer}/{space}"
    assert Topic.parse(text) == t
    assert str(Topic.parse(text)) == text
    assert t.subscription() == text.encode()
    assert not t.is_handshake


def test_topics_are_frozen_and_hashable():
    t = Topic("samples", 1, "x")
    with pytest.raises(AttributeError):
        t.peer = 2  # type: ignore[misc]
    assert {t: 1}[Topic("samples", 1, "x")] == 1
    assert Topic("samples", 1, "x") != Topic("params", 1, "x")
    assert Topic("samples", 1, "x") != Topic("samples", 2, "x")


def test_handshake_topic():
    hs = Topic.handshake(3)
    assert hs == Topic(HANDSHAKE, 3, "")
    assert str(hs) == "hs/3/"
    assert hs.subscription() == b"hs/3/"
    assert hs.is_handshake
    assert Topic.parse("hs/3/") == hs
    assert HANDSHAKE == BUS_HANDSHAKE == "hs"
    assert HANDSHAKE not in KINDS
    # The handshake of peer 1 is not a prefix of peer 12's: the trailing '/' ends the id.
    assert not Topic.handshake(12).subscription().startswith(Topic.handshake(1).subscription())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "samples",
        "samples/3",  # no space
        "samples/3/x/y",  # one level too many
        "samples//x",  # no peer
        "samples/-1/x",
        "samples/+1/x",
        "samples/03/x",  # not the canonical spelling of a peer id
        "samples/ 3/x",
        "samples/3 /x",
        "samples/three/x",
        "samples/3/",  # a data topic needs a space
        "samples/3/x y",
        "samples/3/é",
        "samples/٣/x",  # a non-ASCII digit
        "model/3/x",  # unknown kind
        "Samples/3/x",
        "hs/3/x",  # a handshake has no space
        "hs//",
        "/3/x",
    ],
)
def test_bad_topics_raise(text):
    with pytest.raises(TopicError):
        Topic.parse(text)


@pytest.mark.parametrize(
    "kind, peer, space",
    [("model", 0, "x"), ("samples", -1, "x"), ("samples", True, "x"), ("samples", "3", "x"),
     ("samples", 1.0, "x"), ("samples", 0, ""), ("samples", 0, "a/b"), ("hs", 0, "x")],
)
def test_bad_topic_fields_raise(kind, peer, space):
    with pytest.raises(TopicError):
        Topic(kind, peer, space)


def test_topic_error_is_a_value_error():
    assert issubclass(TopicError, ValueError)


def test_subscription_selects_exactly_its_peer():
    """Prefix filtering: peer 1's subscription must not match peer 12 or 10."""
    sub = Topic("samples", 1, "x").subscription()
    assert Topic("samples", 1, "x").subscription().startswith(sub)
    for other in (Topic("samples", 12, "x"), Topic("samples", 10, "x"),
                  Topic("params", 1, "x")):
        assert not other.subscription().startswith(sub)


@pytest.mark.parametrize("names", [("x",), ("x", "cx"), ("D", "G"), ("x", "mu"), (),
                                   ("hvae", "x", "y"), ("x", "x")])
def test_check_space_names_accepts_prefix_free_names(names):
    check_space_names(names)  # duplicates are one name


@pytest.mark.parametrize("names", [("x", "xy"), ("xy", "x"), ("mu", "x", "mu2"),
                                   ("D", "G", "Dx"), ("a.b", "a")])
def test_check_space_names_refuses_prefix_pairs(names):
    with pytest.raises(TopicError, match="prefix"):
        check_space_names(names)


@pytest.mark.parametrize("name", ["", "a/b", "x y", "é"])
def test_check_space_names_refuses_bad_characters(name):
    with pytest.raises(TopicError):
        check_space_names(["x", name] if name != "x" else [name])


def test_prefix_pair_would_really_confuse_a_subscription():
    """Why the check exists: a subscription to space 'x' also matches space 'xy'."""
    assert Topic("samples", 3, "xy").subscription().startswith(
        Topic("samples", 3, "x").subscription())


# Topics that once slipped through: a trailing newline, a non-ASCII digit.


def test_trailing_newline_in_space_is_refused():
    try:
        t = Topic.parse("samples/3/x\n")
    except TopicError:
        return
    raise AssertionError(f"parsed to {t!r}, which formats as {str(t)!r}")


def test_non_decimal_digit_peer_raises_topic_error():
    with pytest.raises(TopicError):
        Topic.parse("samples/²/x")
