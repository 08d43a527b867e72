"""What an upgrade's new binder makes of the old one's handed-over state (binder/upgrade.py):
the TLS ticket keys keep their age, and keys of unknown age are replaced at once."""

from __future__ import annotations

import json

import pytest

from nsproxy.binder.upgrade import ticket_keys_age

WEEK = 604800.0  # the largest timeouts.ticket_keys


@pytest.mark.parametrize(
    ("handed", "age"),
    [
        ({"ticket_keys_age": 12.5}, 12.5),  # the old binder's figure
        ({"ticket_keys_age": 0}, 0.0),
        ({}, WEEK),  # a build from before rotation: the first sweep replaces them
        ({"ticket_keys_age": None}, WEEK),
        ({"ticket_keys_age": "soon"}, WEEK),
        ({"ticket_keys_age": [1]}, WEEK),
        ({"ticket_keys_age": float("nan")}, WEEK),  # NaN would never compare as due
        ({"ticket_keys_age": float("inf")}, WEEK),
        ({"ticket_keys_age": -5}, 0.0),
        ({"ticket_keys_age": 1e12}, WEEK),
    ],
)
def test_handed_over_ticket_keys_keep_their_age_or_count_as_expired(handed, age):
    # The state travels as JSON (json allows NaN and Infinity).
    assert ticket_keys_age(json.loads(json.dumps(handed))) == age
