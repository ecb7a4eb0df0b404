"""Signing keys and the canonical form: one key per user made on first use, the private half sealed (not in clear,
bound to its row, re-sealed by `hie keys rotate` and still signing after it), and canonical text that is stable."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from hie.consult import signing
from hie.consult.models import SigningKey
from hie.platform.auth.models import User
from hie.platform.cli import main
from hie.platform.crypto import DecryptionError
from hie.platform.keys import load_registry
from tests.conftest import hie_environ, new_patient
from tests.test_consult_opinion import CONSULTANT, OPINION, REQUESTER, consultation, give

NOW = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def test_canonical_text_is_sorted_compact_utf8_and_nfc():
    document = {"b": [1, True, None, "Cafe\u0301"], "a": {"z": "临汾", "y": "x\ny"}}
    assert signing.canonical(document) == '{"a":{"y":"x\\ny","z":"临汾"},"b":[1,true,null,"Caf\u00e9"]}'
    assert signing.canonical(document) == signing.canonical({"a": {"z": "临汾", "y": "x\ny"},
                                                             "b": [1, True, None, "Caf\u00e9"]})
    with pytest.raises(TypeError, match=r"\$\.score"):
        signing.canonical({"score": 0.1})


def test_a_signature_verifies_only_for_its_text_and_key(app, platform_db):
    user_id = platform_db.scalar(select(User.id).where(User.username == CONSULTANT))
    other_id = platform_db.scalar(select(User.id).where(User.username == "quwo.doctor"))
    with app.app_context(), Session(app.extensions["hie.engines"].platform) as session:
        key = signing.key_for(session, user_id, NOW)
        assert signing.key_for(session, user_id, NOW).id == key.id  # made once, then reused
        other = signing.key_for(session, other_id, NOW)
        signature = signing.sign(key, '{"a":"临汾"}')
        assert signing.verify(key.public_key, signature, '{"a":"临汾"}')
        assert not signing.verify(key.public_key, signature, '{"a":"临汾 "}')
        assert not signing.verify(other.public_key, signature, '{"a":"临汾"}')
        assert not signing.verify(key.public_key, "not base64!", '{"a":"临汾"}')
        assert not signing.verify("AAAA", signature, '{"a":"临汾"}')
        session.rollback()


def _key_row(app) -> dict:
    with app.extensions["hie.engines"].platform.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM signing_keys")).mappings().one())


@pytest.fixture
def signed(app, client, as_user, platform_db):
    """One opinion given, so the consultant has a key; the consultation's id."""
    patient = new_patient(client, as_user(REQUESTER))
    consultation_id = consultation(app, platform_db, patient["id"])
    assert give(client, as_user, consultation_id).status_code == 201
    return consultation_id


def test_the_private_key_is_sealed_not_stored_in_clear(app, signed, platform_db):
    row = _key_row(app)
    ring = app.extensions["hie.keyring"]
    assert row["user_id"] == platform_db.scalar(select(User.id).where(User.username == CONSULTANT))
    assert ring.key_id_of(row["private_key_enc"]) == ring.active_kid
    raw = ring.decrypt(row["private_key_enc"], signing.private_key_aad(row["user_id"], row["public_key"]))
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(raw))
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64encode(public).decode() == row["public_key"]
    stored = repr(row)
    for form in (raw, base64.b64decode(raw).hex(), base64.urlsafe_b64encode(base64.b64decode(raw)).decode()):
        assert form not in stored


def test_a_sealed_private_key_moved_to_another_users_row_does_not_open(app, signed, platform_db):
    row = _key_row(app)
    other = platform_db.scalar(select(User.id).where(User.username == "quwo.doctor"))
    with pytest.raises(DecryptionError):
        app.extensions["hie.keyring"].decrypt(row["private_key_enc"], signing.private_key_aad(other,
                                                                                             row["public_key"]))


def test_key_rotation_reseals_the_private_key_and_it_still_signs(app, client, as_user, home, signed):
    assert any(sealed.column == "private_key_enc" and sealed.platform for sealed in load_registry())
    before = _key_row(app)
    ring = app.extensions["hie.keyring"]
    result = CliRunner().invoke(main, ["keys", "rotate"], env=hie_environ(home))
    assert result.exit_code == 0, result.output
    ring.material(force=True)
    after = _key_row(app)
    assert ring.key_id_of(after["private_key_enc"]) == ring.active_kid != ring.key_id_of(before["private_key_enc"])
    assert (after["id"], after["public_key"]) == (before["id"], before["public_key"])
    second = give(client, as_user, signed, {**OPINION, "findings": "复查：ST 段回落。"})
    assert second.status_code == 201, second.get_json()
    assert second.get_json()["signature"]["key_id"] == before["id"]
    for version in (1, 2):
        result = client.get(f"/api/v1/consultations/{signed}/opinion/verify?version={version}",
                            headers=as_user(REQUESTER)).get_json()
        assert result["valid"] is True, result
    with app.extensions["hie.engines"].platform.connect() as conn:
        assert conn.execute(select(SigningKey.id)).scalars().all() == [before["id"]]
