"""Direct identifiers at rest: no plaintext in the shard, rotation keeps data readable, moved ciphertext fails."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
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


def test_sealed_cache_blob_opens_only_under_its_own_key(app):
    from hie.platform.crypto import DecryptionError

    ring = app.extensions["hie.keyring"]
    sealed = ring.encrypt_bytes("王秀英".encode(), "everything:person-a")
    assert ring.decrypt_bytes(sealed, "everything:person-a") == "王秀英".encode()
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for blob, aad in ((sealed, "everything:person-b"), (tampered, "everything:person-a")):
        with pytest.raises(DecryptionError):
            ring.decrypt_bytes(blob, aad)


def _under_key(app, kid: str) -> dict[str, int]:
    """Stored ciphertexts made with one key, per database, over every registered sealed column."""
    from sqlalchemy import select

    from hie.platform.keys import load_registry
    from tests.conftest import TENANTS

    engines = {"platform": app.extensions["hie.engines"].platform}
    engines.update({code: shard_engine(app, code) for code in TENANTS})
    counts = {}
    for name, engine in engines.items():
        counts[name] = 0
        with engine.connect() as conn:
            for sealed in load_registry():
                if sealed.platform != (name == "platform"):
                    continue
                column = sealed.table.c[sealed.column]
                flag = sealed.table.c[sealed.sealed_flag].is_(True) if sealed.sealed_flag else column.is_not(None)
                values = conn.execute(select(column).where(flag, column.is_not(None))).scalars()
                counts[name] += sum(value.startswith(kid + "$") for value in values)
    return counts


def test_rotation_reaches_fhir_versions_and_the_empi_and_everything_still_reads(client, app, as_user, home):
    from tests.fhir_helpers import create, patient, run_jobs

    yaodu, quwo = as_user("yaodu.doctor"), as_user("quwo.doctor")
    local = new_patient(client, yaodu)
    fhir_yaodu = create(client, yaodu, patient(name="张三", id_number=None, phone="13700000001"))
    fhir_quwo = create(client, quwo, patient())
    changed = client.put(f"/fhir/Patient/{fhir_quwo['id']}", json={**fhir_quwo, "gender": "male"}, headers=quwo)
    assert changed.status_code == 200, changed.get_json()
    run_jobs(app)
    ring = app.extensions["hie.keyring"]
    old_kid = ring.active_kid
    before = _under_key(app, old_kid)
    assert before["platform"] > 0 and before["quwo"] >= 3 and before["yaodu"] >= 5, before
    result = CliRunner().invoke(main, ["keys", "rotate", "--batch", "1"], env=hie_environ(home))
    assert result.exit_code == 0, result.output
    assert f"platform: {before['platform']} values re-encrypted" in result.output
    ring.material(force=True)
    assert _under_key(app, old_kid) == {name: 0 for name in before}
    assert client.get(f"/api/v1/patients/{local['id']}", headers=yaodu).get_json() == local
    assert client.get(f"/fhir/Patient/{fhir_yaodu['id']}", headers=yaodu).get_json()["name"] == [{"text": "张三"}]
    assert client.get(f"/fhir/Patient/{fhir_quwo['id']}", headers=quwo).get_json()["gender"] == "male"
    first = client.get(f"/fhir/Patient/{fhir_quwo['id']}/_history/1", headers=quwo)
    assert first.status_code == 200 and first.get_json()["gender"] == "female"
    found = client.get("/api/v1/empi/persons?name=王秀英&birth_date=1958-03-12&sex=F", headers=yaodu)
    assert found.status_code == 200 and found.get_json(), found.get_json()


def test_rotation_reads_a_table_once_for_all_its_sealed_columns(client, app, as_user):
    from sqlalchemy import event

    from hie.platform.keys import reencrypt

    headers = as_user("yaodu.doctor")
    for i in range(3):
        new_patient(client, headers, mrn=f"P-{i}", phone=f"1393571234{i}")
    engine, reads = shard_engine(app, "yaodu"), []

    def count(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM patients" in statement:
            reads.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        reencrypt(engine, app.extensions["hie.keyring"], "yaodu", batch=2)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(reads) == 3  # batches of 2 and 1, then the empty one that ends the pass
