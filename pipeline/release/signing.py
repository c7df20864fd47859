"""Sign a release, and check its signature, with OpenSSF's model signing library.

The manifest's ``manifest_sha256`` is an unkeyed hash: it catches accidental
edits, and anyone who edits a manifest on purpose can recompute it. A
signature says *who* wrote the release: ``release.sig`` is a Sigstore bundle
(an in-toto statement listing the sha256 of every other file of the release,
signed with the producer's elliptic-curve private key; offline, no
transparency log). ``pipeline verify --public-key PUB`` checks it against the
public key the deployer holds.

The signature is written last, in the staging folder, after the manifest is
sealed and before the release is renamed into place; it covers every file of
the release (manifest, model, reports, the Triton repository) except itself.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from nhle_pipeline.pipeline.errors import ConfigError, InputError, TamperedReleaseError
from nhle_pipeline.pipeline.jsonio import loads as strict_json
from nhle_pipeline.pipeline.release.files import SIGNATURE

PASSWORD_ENV = "PIPELINE_SIGN_KEY_PASSWORD"  # for an encrypted private key
CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model_signing accepts


@dataclass(frozen=True)
class SigningKey:
    """A private key checked to be usable, before any work: its path and the public key's fingerprint."""

    path: Path
    fingerprint: str  # sha256 of the public key (PEM, SubjectPublicKeyInfo): the bundle's key hint
    password: str | None = None


def _public_fingerprint(public_key) -> str:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def load_signing_key(path: str | Path, source: str = "release.sign_key") -> SigningKey:
    """Read and check a PEM elliptic-curve private key; every problem is one ``ConfigError`` naming ``source``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p = Path(path)
    where = f"{source}: '{p}'"
    if not p.is_file():
        raise ConfigError(f"{where}: no such file (expected a PEM elliptic-curve private key)")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror})") from e
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError as e:  # encrypted without a password, or a password for a plain key
        raise ConfigError(f"{where}: {'encrypted; set ' + PASSWORD_ENV if not password else str(e)}") from e
    except ValueError as e:
        raise ConfigError(f"{where}: not a PEM private key, or the wrong password ({str(e).splitlines()[0][:120]})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{where}: a {type(key).__name__.lstrip('_')}; expected an elliptic-curve key ({', '.join(CURVES)})")
    if key.curve.name not in CURVES:
        raise ConfigError(f"{where}: curve {key.curve.name} is not supported; expected one of {', '.join(CURVES)}")
    return SigningKey(p, _public_fingerprint(key.public_key()), password)


def _hashing_config():
    """Every file, sha256, no symlinks, nothing ignored but the signature itself (git files included)."""
    from model_signing import hashing

    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)
    )


def sign_release(folder: Path, key: SigningKey) -> Path:
    """Write ``folder/release.sig`` over every other file of ``folder``."""
    from model_signing import signing

    sig = Path(folder) / SIGNATURE
    (signing.Config()
     .use_elliptic_key_signer(private_key=key.path, password=key.password)
     .set_hashing_config(_hashing_config())
     .sign(Path(folder), sig))
    return sig


def _load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    where = f"--public-key: '{path}'"
    if not path.is_file():
        raise InputError(f"{where}: no such file (expected the producer's PEM public key)")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        raise InputError(f"{where}: not a PEM public key ({str(e).splitlines()[0][:120]})") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
        raise InputError(f"{where}: expected an elliptic-curve public key ({', '.join(CURVES)})")
    return key


def _mismatch(message: str) -> str:
    """model_signing's 'Signature mismatch' text (a list's repr, digests as bytes), shortened to file names."""
    parts = []
    for label, pattern in (("changed", r"Hash mismatch for \\*'([^'\\]+)"),
                           ("added", r"Extra files found in model \\*'[^']*\\*': ([^'\"\]\\]+)"),
                           ("removed", r"Missing files in model \\*'[^']*\\*': ([^'\"\]\\]+)")):
        names = [n.strip() for n in re.findall(pattern, message)]
        if names:
            parts.append(f"{label}: {', '.join(names)[:200]}")
    return "; ".join(parts) or message[:200]


def verify_signature(folder: Path, public_key: str | Path) -> str:
    """Check ``folder/release.sig`` against ``public_key``; returns the key's fingerprint.

    A missing, malformed or wrong signature, one made with another key, or
    files that differ from the signed ones: ``TamperedReleaseError`` naming
    ``release.sig``. A public key that cannot be read: ``InputError``.
    """
    from model_signing import verifying

    folder = Path(folder)
    pub_path = Path(public_key)
    pub = _load_public_key(pub_path)
    sig = folder / SIGNATURE
    if sig.is_symlink() or not sig.is_file():
        raise TamperedReleaseError(f"{sig}: missing; the release is not signed (a signature was required)")
    try:  # strict JSON first: a key given twice could make two verifiers see two different bundles
        strict_json(sig.read_bytes())
    except (OSError, ValueError) as e:
        raise TamperedReleaseError(f"{sig}: not a valid signature (not strict JSON: {e})") from e
    try:
        (verifying.Config()
         .use_elliptic_key_verifier(public_key=pub_path)
         .set_hashing_config(_hashing_config())
         .verify(folder, sig))
    except ValueError as e:
        text = " ".join(str(e).split())
        if text.startswith("Key mismatch"):
            raise TamperedReleaseError(f"{sig}: signed with another key than '{pub_path}'") from e
        if text.startswith("Signature mismatch"):
            raise TamperedReleaseError(f"{sig}: the release's files differ from the signed ones ({_mismatch(text)})") from e
        raise TamperedReleaseError(f"{sig}: not a valid signature ({text[:200]})") from e
    except Exception as e:  # InvalidSignature (no message), a malformed bundle (JSON, protobuf, base64)
        detail = " ".join(str(e).split())[:200] or "the signature does not match the signed content"
        raise TamperedReleaseError(f"{sig}: does not verify with '{pub_path}' ({type(e).__name__}: {detail})") from e
    return _public_fingerprint(pub)
