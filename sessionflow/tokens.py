"""API tokens: `sf_<id>_<secret>`. Only a sha256 of the whole token is stored; the id part
names a token for revocation without revealing it."""

from __future__ import annotations

import hashlib
import re
import secrets

import psycopg

from sessionflow.queries import Q

_TOKEN = re.compile(r"^sf_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")


def hash_token(token: str) -> bytes:
    # Tokens carry 256 random bits, so a plain digest is as good as a slow KDF here.
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """A fresh (token_id, token)."""
    token_id = secrets.token_hex(6)
    return token_id, f"sf_{token_id}_{secrets.token_urlsafe(32)}"


def token_id_of(value: str) -> str | None:
    """The id of a token, or the value itself when it already is an id."""
    match = _TOKEN.match(value)
    if match:
        return match.group(1)
    return value if re.fullmatch(r"[0-9a-f]{12}", value) else None


def create_token(conn: psycopg.Connection, owner: str) -> tuple[str, str]:
    token_id, token = new_token()
    conn.execute(Q.token_insert, {"id": token_id, "owner": owner, "token_hash": hash_token(token)})
    return token_id, token


def revoke_token(conn: psycopg.Connection, token_id: str) -> bool:
    return conn.execute(Q.token_revoke, {"id": token_id}).fetchone() is not None


def count_active_tokens(conn: psycopg.Connection) -> int:
    row = conn.execute(Q.token_count_active).fetchone()
    return int(row[0]) if row else 0
