"""Signing a release folder and checking it (pipeline/release/signing.py), offline, with EC keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from nhle_pipeline.pipeline.errors import ConfigError, InputError, TamperedReleaseError
from nhle_pipeline.pipeline.release.files import SIGNATURE
from nhle_pipeline.pipeline.release.signing import (
    PASSWORD_ENV,
    load_signing_key,
    sign_release,
    verify_signature,
)


def _pem(key, password: bytes | None = None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _pub(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture()
def keys(tmp_path) -> dict[str, Path]:
    from cryptography.hazmat.primitives.asymmetric import ec

    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1())
    out = {"key": tmp_path / "a.pem", "pub": tmp_path / "a.pub", "other": tmp_path / "b.pub"}
    out["key"].write_bytes(_pem(a))
    out["pub"].write_bytes(_pub(a))
    out["other"].write_bytes(_pub(b))
    return out


@pytest.fixture()
def folder(tmp_path) -> Path:
    rel = tmp_path / "rel"
    (rel / "triton" / "m" / "1").mkdir(parents=True)
    (rel / "model.onnx").write_bytes(b"model")
    (rel / "manifest.json").write_text("{}")
    (rel / "triton" / "m" / "1" / "model.onnx").write_bytes(b"model")
    return rel


def test_sign_then_verify_every_file(folder, keys):
    key = load_signing_key(keys["key"])
    assert sign_release(folder, key) == folder / SIGNATURE
    assert verify_signature(folder, keys["pub"]) == key.fingerprint


@pytest.mark.parametrize("change, message", [
    (lambda r: (r / "triton" / "m" / "1" / "model.onnx").write_bytes(b"other"), "changed: triton/m/1/model.onnx"),
    (lambda r: (r / "manifest.json").write_text('{"x": 1}'), "changed: manifest.json"),
    (lambda r: (r / ".gitignore").write_text("x"), "added: .gitignore"),  # git files are not exempt
    (lambda r: (r / "model.onnx").unlink(), "removed: model.onnx"),
])
def test_any_change_after_signing_fails(folder, keys, change, message):
    sign_release(folder, load_signing_key(keys["key"]))
    change(folder)
    with pytest.raises(TamperedReleaseError, match=f"release.sig: the release's files differ from the signed ones.*{message}"):
        verify_signature(folder, keys["pub"])


def test_another_key_a_missing_signature_and_a_bad_public_key(folder, keys, tmp_path):
    with pytest.raises(TamperedReleaseError, match="release.sig: missing"):
        verify_signature(folder, keys["pub"])
    sign_release(folder, load_signing_key(keys["key"]))
    with pytest.raises(TamperedReleaseError, match="signed with another key"):
        verify_signature(folder, keys["other"])
    with pytest.raises(InputError, match="--public-key: .*not a PEM public key"):
        verify_signature(folder, keys["key"])
    with pytest.raises(InputError, match="--public-key: .*no such file"):
        verify_signature(folder, tmp_path / "absent.pub")


def test_signing_keys_are_checked_before_any_work(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ConfigError, match="release.sign_key: .*no such file"):
        load_signing_key(tmp_path / "absent.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="--sign-key: .*not a PEM private key"):
        load_signing_key(junk, "--sign-key")
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    with pytest.raises(ConfigError, match="expected an elliptic-curve key"):
        load_signing_key(rsa_key)
    k1 = tmp_path / "k1.pem"
    k1.write_bytes(_pem(ec.generate_private_key(ec.SECP256K1())))
    with pytest.raises(ConfigError, match="curve secp256k1 is not supported"):
        load_signing_key(k1)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1()), b"s3cret"))
    with pytest.raises(ConfigError, match=f"encrypted; set {PASSWORD_ENV}"):
        load_signing_key(locked)
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    assert load_signing_key(locked).password == "s3cret"
