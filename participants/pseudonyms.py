"""Participants' pseudonyms: `p_` + 16 hex chars of HMAC-SHA256 over the participant's id.

The one name a participant has outside the participant side (the console, the API, exports). It is
computed from the row id under a key derived from `PSEUDONYM_KEY` (else the secret key), so it reveals
neither the id nor any recruiter identifier; `Participant.pseudonym` stores it at creation.
"""
import hashlib
import hmac

from django.conf import settings

PSEUDONYM_SALT = b"teachback.analysis.pseudonym.v1"  # the name is historical: exports have always used it


def pseudonym_key() -> bytes:
    secret = settings.PSEUDONYM_KEY or settings.SECRET_KEY
    return hmac.new(secret.encode(), PSEUDONYM_SALT, hashlib.sha256).digest()


def pseudonym(participant_id: int, key: bytes | None = None) -> str:
    """Return the participant's stable pseudonym (`p_` + 16 hex chars)."""
    key = key or pseudonym_key()
    return "p_" + hmac.new(key, str(participant_id).encode(), hashlib.sha256).hexdigest()[:16]
