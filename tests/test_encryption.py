"""Direct identifiers at rest: no plaintext in the shard, rotation keeps data readable, moved ciphertext fails."""

from __future__ import annotations

import time
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from hie.platform.cli import main
from tests.conftest import MYSQL_URL, hie_environ, new_patient, shard_engine, valid_id

ID_NUMBER = valid_id("14100219580312002")


def _stored_bytes(app, tenant: str) -> bytes:
    """Everything the shard holds for patients: the raw files on SQLite, every column on MySQL."""
    engine = shard_engine(app, tenant)
    if MYSQL_URL:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM patients")).all()
        return repr(rows).encode() + b"".join(str(v).encode() for row in rows for v in row)
    engine.dispose()
    path = Path(make_url(str(engine.url)).database)
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_shard_holds_no_plaintext_identifiers(client, app, as_user):
    new_patient(client, as_user("yaodu.doctor"))
    stored = _stored_bytes(app, "yaodu")
    assert b"MRN-1" in stored
    for plaintext in (ID_NUMBER, "13935712345", "王秀英", "东关村"):
        assert plaintext.encode() not in stored, plaintext


def test_rotation_keeps_everything_readable_and_reencrypts(client, app, as_user, home):
    headers = as_user("yaodu.doctor")
    patients = [new_patient(client, headers, mrn=f"R-{i}", phone=f"1393571234{i}") for i in range(3)]
    old_kid = app.extensions["hie.keyring"].active_kid
    result = CliRunner().invoke(main, ["keys", "rotate", "--batch", "2"], env=hie_environ(home))
    assert result.exit_code == 0, result.output
    assert "yaodu: 12 values re-encrypted" in result.output
    with shard_engine(app, "yaodu").connect() as conn:
        sealed = conn.execute(text("SELECT name_enc, phone_enc, id_number_enc, address_enc FROM patients")).all()
    kids = {value.split("$")[0] for row in sealed for value in row}
    assert len(kids) == 1 and old_kid not in kids
    for patient in patients:
        assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).get_json() == patient
    time.sleep(1.1)
    later = new_patient(client, headers, mrn="R-9")
    with shard_engine(app, "yaodu").connect() as conn:
        name_enc = conn.execute(text("SELECT name_enc FROM patients WHERE id = :id"), {"id": later["id"]}).scalar()
    assert name_enc.split("$")[0] in kids
    assert client.get("/api/v1/patients?phone=13935712341", headers=headers).get_json()[0]["mrn"] == "R-1"


def test_ciphertext_moved_to_another_row_does_not_open(client, app, as_user):
    headers = as_user("yaodu.doctor")
    source = new_patient(client, headers, mrn="A")
    target = new_patient(client, headers, mrn="B", id_number=valid_id("14100219900101001"))
    with shard_engine(app, "yaodu").begin() as conn:
        sealed = conn.execute(text("SELECT id_number_enc FROM patients WHERE id = :id"), {"id": source["id"]}).scalar()
        conn.execute(text("UPDATE patients SET id_number_enc = :v WHERE id = :id"), {"v": sealed, "id": target["id"]})
    response = client.get(f"/api/v1/patients/{target['id']}", headers=headers)
    assert response.status_code == 500
    assert response.get_json()["title"] == "Integrity Failure"
    assert ID_NUMBER not in response.get_data(as_text=True)


def test_row_copied_into_another_tenant_does_not_open(client, app, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    with shard_engine(app, "yaodu").connect() as conn:
        row = conn.execute(text("SELECT * FROM patients WHERE id = :id"), {"id": patient["id"]}).mappings().one()
    values = dict(row)
    quwo_ch = client.get("/api/v1/auth/me", headers=as_user("quwo.doctor")).get_json()
    assert quwo_ch["tenant_code"] == "quwo"
    from sqlalchemy import select

    from hie.tenants.models import Institution

    with app.app_context():
        from hie.platform.db import registry

        with registry().platform.connect() as conn:
            values["institution_id"] = conn.execute(
                select(Institution.id).where(Institution.code == "QUWO-CH")).scalar()
    columns = ", ".join(values)
    with shard_engine(app, "quwo").begin() as conn:
        conn.execute(text(f"INSERT INTO patients ({columns}) VALUES ({', '.join(':' + c for c in values)})"), values)
    response = client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("quwo.doctor"))
    assert response.status_code == 500
    assert "王秀英" not in response.get_data(as_text=True)


def test_keyring_refuses_wrong_associated_data(app):
    from hie.platform.crypto import DecryptionError

    ring = app.extensions["hie.keyring"]
    sealed = ring.encrypt("13935712345", "patients.phone|yaodu|row-1")
    assert ring.decrypt(sealed, "patients.phone|yaodu|row-1") == "13935712345"
    for aad in ("patients.phone|yaodu|row-2", "patients.phone|quwo|row-1", "patients.name|yaodu|row-1"):
        try:
            ring.decrypt(sealed, aad)
        except DecryptionError:
            continue
        raise AssertionError(f"opened under {aad}")
