-- Every statement sessionflow sends, by name. Loaded once by sessionflow/queries.py.
-- Parameters use psycopg's %(name)s style; nothing here is built from strings.

-- name: token_insert
INSERT INTO api_tokens (id, owner, token_hash) VALUES (%(id)s, %(owner)s, %(token_hash)s);

-- name: token_owner
SELECT owner FROM api_tokens WHERE token_hash = %(token_hash)s AND revoked_at IS NULL;

-- name: token_revoke
UPDATE api_tokens SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL RETURNING id;

-- name: token_count_active
SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL;

-- name: session_hashes
SELECT id, transcript_sha256 FROM sessions WHERE owner = %(owner)s AND id = ANY(%(ids)s);

-- name: registration_upsert
INSERT INTO session_registrations (owner, id, sha256, size, metadata)
SELECT %(owner)s, r.id, r.sha256, r.size, r.metadata
FROM unnest(%(ids)s::text[], %(sha256s)s::text[], %(sizes)s::bigint[], %(metadatas)s::jsonb[])
     AS r(id, sha256, size, metadata)
ON CONFLICT (owner, id) DO UPDATE
SET sha256 = EXCLUDED.sha256, size = EXCLUDED.size,
    metadata = coalesce(EXCLUDED.metadata, session_registrations.metadata),
    registered_at = now();

-- name: session_ingest
-- Records a stored transcript and queues its session, unless the same bytes are already
-- there (and force is off): then no row is returned and nothing changes.
INSERT INTO sessions AS s (owner, id, transcript_key, transcript_size, transcript_sha256, metadata)
VALUES (%(owner)s, %(id)s, %(key)s, %(size)s, %(sha256)s,
        (SELECT metadata FROM session_registrations WHERE owner = %(owner)s AND id = %(id)s))
ON CONFLICT (owner, id) DO UPDATE
SET lifecycle = 'queued', parse_status = 'pending', error = NULL,
    transcript_key = EXCLUDED.transcript_key, transcript_size = EXCLUDED.transcript_size,
    transcript_sha256 = EXCLUDED.transcript_sha256,
    metadata = coalesce(EXCLUDED.metadata, s.metadata),
    parse_result = NULL, summary = NULL, queued_at = now(), finished_at = NULL,
    attempts = 0, run_after = now(), lease_token = NULL, lease_owner = NULL,
    lease_expires_at = NULL
WHERE %(force)s OR s.transcript_sha256 <> EXCLUDED.transcript_sha256
RETURNING lifecycle, version;

-- name: session_state
SELECT lifecycle, version FROM sessions WHERE owner = %(owner)s AND id = %(id)s;

-- name: batch_status
SELECT id, lifecycle, parse_status, version
FROM sessions WHERE owner = %(owner)s AND id = ANY(%(ids)s);

-- name: session_detail
SELECT id, lifecycle, parse_status, version, error, attempts, transcript_sha256,
       transcript_size, metadata, created_at, updated_at, queued_at, finished_at,
       parse_result, summary
FROM sessions WHERE owner = %(owner)s AND id = %(id)s;

-- name: migrations_applied
SELECT name FROM schema_migrations ORDER BY name;

-- ===== worker: claims, leases, stage transitions =====

-- ===== live stream: snapshots for the hub =====

-- name: live_listen
-- The hub's one LISTEN per server process (sessionflow/server/live.py).
LISTEN session_lifecycle;

-- name: live_ping
-- Liveness of the LISTEN connection: a half-open link only shows itself when asked something.
SELECT 1;

-- name: live_snapshot
-- What a watch is answered with, and what a resync re-reads: the batch-status shape.
SELECT id, lifecycle, parse_status, version
FROM sessions WHERE owner = %(owner)s AND id = ANY(%(ids)s);
