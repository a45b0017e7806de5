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

-- name: registrations_expire
-- Registrations of sessions whose transcript never came: kept for a while (the upload usually
-- follows at once), then dropped, so the table cannot grow without limit.
DELETE FROM session_registrations
WHERE owner = %(owner)s AND registered_at < now() - make_interval(secs => %(ttl_seconds)s);

-- name: registrations_pending
SELECT count(*) FROM session_registrations WHERE owner = %(owner)s;

-- name: registration_forget
-- The session is ingested and carries the metadata now.
DELETE FROM session_registrations WHERE owner = %(owner)s AND id = %(id)s;

-- name: file_record
-- An owner has uploaded these bytes (stored content-addressed before this runs).
INSERT INTO transcript_files (owner, sha256, size) VALUES (%(owner)s, %(sha256)s, %(size)s)
ON CONFLICT (owner, sha256) DO NOTHING;

-- name: files_owned
-- Which of these file contents the owner has uploaded, with their true sizes.
SELECT sha256, size FROM transcript_files WHERE owner = %(owner)s AND sha256 = ANY(%(sha256s)s);

-- name: session_ingest
-- Records a session's stored files and queues it, unless the same files are already there
-- (and force is off): then no row is returned and nothing changes. sha256 is the session's
-- digest (protocol.session_digest); files is NULL for a session of one main transcript.
-- Queuing (re)starts its job afresh: attempts counted from zero, and a worker still on an
-- earlier upload loses its lease (its fenced writes change nothing).
WITH ingested AS (
    INSERT INTO sessions AS s (owner, id, transcript_key, transcript_size, transcript_sha256,
                               files, metadata)
    VALUES (%(owner)s, %(id)s, %(key)s, %(size)s, %(sha256)s, %(files)s::jsonb,
            (SELECT metadata FROM session_registrations WHERE owner = %(owner)s AND id = %(id)s))
    ON CONFLICT (owner, id) DO UPDATE
    SET lifecycle = 'queued', parse_status = 'pending', error = NULL,
        transcript_key = EXCLUDED.transcript_key, transcript_size = EXCLUDED.transcript_size,
        transcript_sha256 = EXCLUDED.transcript_sha256, files = EXCLUDED.files,
        metadata = coalesce(EXCLUDED.metadata, s.metadata),
        parse_result = NULL, parser_version = NULL, summary = NULL, queued_at = now(),
        finished_at = NULL, lease_token = NULL
    WHERE %(force)s OR s.transcript_sha256 <> EXCLUDED.transcript_sha256
    RETURNING owner, id, lifecycle, version
), job AS (
    INSERT INTO jobs (owner, id) SELECT owner, id FROM ingested
    ON CONFLICT (owner, id) DO UPDATE
    SET priority = 0, run_after = now(), attempts = 0, lease_token = NULL, lease_owner = NULL,
        lease_expires_at = NULL, done = false
), queued_by AS (
    INSERT INTO job_owners (owner) SELECT owner FROM ingested ON CONFLICT DO NOTHING
)
SELECT lifecycle, version FROM ingested;

-- name: session_state
SELECT lifecycle, version FROM sessions WHERE owner = %(owner)s AND id = %(id)s;

-- name: batch_status
-- The polling hot path, in one round trip: the owner of the caller's token (NULL when it is
-- unknown or revoked, and then no session matches), that owner's statuses of the ids asked, and
-- the ids not found, in the order asked. PostgreSQL builds both JSON texts itself and reads the
-- ids from a batch-status request body (JSON, {"session_ids": [...]}): each is several times
-- cheaper in C than in Python, per request. The ids must be distinct (the server sends a body of
-- de-duplicated ids when the client repeated one): a repeated one would repeat its key.
SELECT caller.owner, found.statuses, found.not_found
FROM (SELECT (SELECT owner FROM api_tokens
              WHERE token_hash = %(token_hash)s AND revoked_at IS NULL) AS owner) AS caller
CROSS JOIN LATERAL (
    SELECT coalesce(json_object_agg(s.id, json_build_object(
               'lifecycle', s.lifecycle, 'parse_status', s.parse_status, 'version', s.version))
               FILTER (WHERE s.id IS NOT NULL), '{}')::text AS statuses,
           coalesce(json_agg(asked.id ORDER BY asked.n) FILTER (WHERE s.id IS NULL),
               '[]')::text AS not_found
    FROM json_array_elements_text(%(body)s::json -> 'session_ids') WITH ORDINALITY AS asked (id, n)
    LEFT JOIN sessions AS s ON s.owner = caller.owner AND s.id = asked.id
) AS found;

-- name: session_detail
-- attempts: of the session's job (sql/004_jobs.sql), counted from its last (re-)ingest.
SELECT s.id, s.lifecycle, s.parse_status, s.version, s.error, coalesce(j.attempts, 0) AS attempts,
       s.transcript_sha256, s.transcript_size, s.metadata,
       session_files(s.files, s.transcript_sha256, s.transcript_size, s.metadata) AS files,
       s.parser_version, s.created_at, s.updated_at, s.queued_at, s.finished_at, s.parse_result,
       s.summary
FROM sessions AS s LEFT JOIN jobs AS j ON j.owner = s.owner AND j.id = s.id
WHERE s.owner = %(owner)s AND s.id = %(id)s;

-- name: list_sessions
-- A page of an owner's sessions, newest first, after the cursor's (active_at, id): the keyset
-- of sessions_list_idx, so a deep page costs what the first does and a session added while
-- someone pages cannot shift what they see next. The first page passes ('infinity', ''), no
-- --since passes '-infinity' and no --state every state, so the statement has one shape and
-- its plan always reads the index.
SELECT id, lifecycle, parse_status, active_at, project, title, duration_seconds, tokens,
       cost_usd
FROM session_list_rows
WHERE owner = %(owner)s
  AND (active_at, id) < (%(after_at)s::timestamptz, %(after_id)s::text)
  AND active_at >= %(since)s::timestamptz
  AND lifecycle = ANY(%(states)s::text[])
ORDER BY active_at DESC, id DESC
LIMIT %(limit)s;

-- name: list_sessions_in_project
-- list_sessions within one project (sessions_list_project_idx), its name matched without
-- regard to case.
SELECT id, lifecycle, parse_status, active_at, project, title, duration_seconds, tokens,
       cost_usd
FROM session_list_rows
WHERE owner = %(owner)s
  AND lower(project) = lower(%(project)s::text)
  AND (active_at, id) < (%(after_at)s::timestamptz, %(after_id)s::text)
  AND active_at >= %(since)s::timestamptz
  AND lifecycle = ANY(%(states)s::text[])
ORDER BY active_at DESC, id DESC
LIMIT %(limit)s;

-- name: migrations_applied
SELECT name FROM schema_migrations ORDER BY name;

-- ===== worker: claims, leases, stage transitions =====
-- A session's job is its row in jobs (sql/004_jobs.sql): the claim, lease, heartbeat,
-- attempts and retry time live there. The sessions row changes with what a person sees, and
-- carries the token of the claim that may write it (lease_token), which fences every stage
-- write on the row it changes.
--
-- Locks are taken in one order, sessions before jobs, or skipped: the claim locks both with
-- SKIP LOCKED and waits for neither; the writes below change the session first and its job
-- after; a heartbeat touches jobs alone. So no two of them can wait on each other.

-- name: claim_jobs
-- Takes up to %(limit)s runnable jobs that no live lease holds (none, or one whose worker
-- stopped renewing it), and starts a queued session downloading. Fair across owners: each
-- owner with runnable work offers its next jobs in its own order (new work before background
-- work, oldest first), and the claim takes the first of every owner before the second of any,
-- owners served longest ago first; so queued as A A A A B B C they run as A B C A B A A, and
-- one owner's backlog never holds another's first session back by more than one claim.
-- Every claim counts as an attempt, so a transcript that kills its worker each time still
-- ends up failed. Returns the lifecycle each was claimed in (a resumed job carries on from
-- there), its files, and how long it waited since it became runnable (queued or due, or its
-- last lease expired).
WITH offered AS (
    SELECT next.*, o.served_at,
           row_number() OVER (PARTITION BY next.owner ORDER BY next.priority, next.run_after)
               AS turn
    FROM job_owners AS o
    CROSS JOIN LATERAL (
        SELECT j.owner, j.id, j.priority, j.run_after, s.lifecycle,
               greatest(j.run_after, coalesce(j.lease_expires_at, j.run_after)) AS runnable_since
        FROM jobs AS j JOIN sessions AS s ON s.owner = j.owner AND s.id = j.id
        WHERE j.owner = o.owner AND NOT j.done AND j.run_after <= now()
          AND (j.lease_expires_at IS NULL OR j.lease_expires_at <= now())
        ORDER BY j.priority, j.run_after
        LIMIT %(limit)s
        FOR NO KEY UPDATE OF j, s SKIP LOCKED
    ) AS next
), picked AS (
    SELECT * FROM offered
    ORDER BY priority, turn, served_at NULLS FIRST, owner
    LIMIT %(limit)s
), claimed AS (
    UPDATE jobs AS j
    SET lease_token = gen_random_uuid(), lease_owner = %(worker)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        attempts = j.attempts + 1
    FROM picked
    WHERE j.owner = picked.owner AND j.id = picked.id
    RETURNING j.owner, j.id, j.lease_token, j.attempts, picked.lifecycle, picked.runnable_since
), served AS (
    -- An owner another claim is marking right now is being served by it: skipped, not waited
    -- for (two claims marking two owners in opposite orders would deadlock).
    UPDATE job_owners SET served_at = clock_timestamp()
    WHERE owner IN (
        SELECT owner FROM job_owners WHERE owner IN (SELECT owner FROM claimed)
        FOR NO KEY UPDATE SKIP LOCKED
    )
)
UPDATE sessions AS s
SET lease_token = c.lease_token,
    lifecycle = CASE WHEN s.lifecycle = 'queued' THEN 'downloading' ELSE s.lifecycle END
FROM claimed AS c
WHERE s.owner = c.owner AND s.id = c.id
RETURNING s.owner, s.id, c.lifecycle, c.lease_token, c.attempts, s.transcript_key,
          s.transcript_sha256, s.transcript_size,
          session_files(s.files, s.transcript_sha256, s.transcript_size, s.metadata),
          extract(epoch FROM clock_timestamp() - c.runnable_since)::float8;

-- name: extend_leases
-- Renews the leases a worker still holds (the jobs rows alone); a lease missing from the
-- result was taken away (re-ingest, or expiry and another worker's claim) and its job must be
-- abandoned.
UPDATE jobs AS j
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
FROM unnest(%(owners)s::text[], %(ids)s::text[], %(leases)s::uuid[]) AS h(owner, id, lease)
WHERE j.owner = h.owner AND j.id = h.id AND j.lease_token = h.lease
RETURNING j.lease_token;

-- The stage writes below each move a batch of held sessions, one row of the batch per session:
-- %(batch)s is a JSON array of objects (owner, id, the job's lease, and what the write sets),
-- one text parameter however many sessions it holds, so the statement's plan never depends on
-- the batch. Every write is fenced by the lease token on the sessions row: the leases returned
-- are those of the jobs whose session was still theirs, and a lease missing from the result
-- means that job is no longer this worker's to finish. %(most)s is the most a batch may hold
-- (the worker's batch size, the same in every call): it tells the planner how few rows come,
-- so each is found by its primary key rather than by scanning the table.

-- name: jobs_advance
-- Moves each session to a non-terminal lifecycle.
UPDATE sessions AS s SET lifecycle = b.lifecycle
FROM (SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
          AS r(owner text, id text, lease uuid, lifecycle text)
      LIMIT %(most)s) AS b
WHERE s.owner = b.owner AND s.id = b.id AND s.lease_token = b.lease
RETURNING b.lease;

-- name: jobs_start_summarizing
UPDATE sessions AS s
SET lifecycle = 'summarizing', parse_status = b.parse_status, parse_result = b.parse_result,
    parser_version = b.parser_version, error = NULL
FROM (SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
          AS r(owner text, id text, lease uuid, parse_status text, parse_result jsonb,
               parser_version integer)
      LIMIT %(most)s) AS b
WHERE s.owner = b.owner AND s.id = b.id AND s.lease_token = b.lease
RETURNING b.lease;

-- name: jobs_finish_parsed
WITH finished AS (
    UPDATE sessions AS s
    SET lifecycle = 'parsed', parse_status = b.parse_status, parse_result = b.parse_result,
        parser_version = b.parser_version, error = NULL, lease_token = NULL
    FROM (SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
              AS r(owner text, id text, lease uuid, parse_status text, parse_result jsonb,
                   parser_version integer)
          LIMIT %(most)s) AS b
    WHERE s.owner = b.owner AND s.id = b.id AND s.lease_token = b.lease
    RETURNING s.owner, s.id, b.lease
), done AS (
    UPDATE jobs AS j
    SET done = true, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
    FROM finished AS f WHERE j.owner = f.owner AND j.id = f.id
)
SELECT lease FROM finished;

-- name: jobs_finish_summarized
WITH finished AS (
    UPDATE sessions AS s
    SET lifecycle = 'summarized', summary = b.summary, error = NULL, lease_token = NULL
    FROM (SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
              AS r(owner text, id text, lease uuid, summary jsonb)
          LIMIT %(most)s) AS b
    WHERE s.owner = b.owner AND s.id = b.id AND s.lease_token = b.lease
    RETURNING s.owner, s.id, b.lease
), done AS (
    UPDATE jobs AS j
    SET done = true, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
    FROM finished AS f WHERE j.owner = f.owner AND j.id = f.id
)
SELECT lease FROM finished;

-- name: job_parse_result
SELECT parse_result FROM sessions
WHERE owner = %(owner)s AND id = %(id)s AND lease_token = %(lease)s;

-- name: jobs_release
-- Gives jobs back for a later attempt: after a transient error (with a backoff and the reason
-- in error), or undone on a graceful stop (refund = 1: that attempt does not count).
WITH released AS (
    UPDATE sessions AS s SET lease_token = NULL, error = coalesce(b.error, s.error)
    FROM (SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
              AS r(owner text, id text, lease uuid, error text, delay_seconds float8,
                   refund integer)
          LIMIT %(most)s) AS b
    WHERE s.owner = b.owner AND s.id = b.id AND s.lease_token = b.lease
    RETURNING s.owner, s.id, b.lease, b.delay_seconds, b.refund
), requeued AS (
    UPDATE jobs AS j
    SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
        run_after = now() + make_interval(secs => r.delay_seconds),
        attempts = greatest(j.attempts - r.refund, 0)
    FROM released AS r WHERE j.owner = r.owner AND j.id = r.id
)
SELECT lease FROM released;

-- name: jobs_fail
-- A session that was never parsed fails its parse too; one that failed later keeps its result.
WITH failed AS (
    UPDATE sessions AS s
    SET lifecycle = 'failed', error = b.error,
        parse_status = CASE WHEN s.parse_status = 'pending' THEN 'failed' ELSE s.parse_status END,
        lease_token = NULL
    FROM (SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
              AS r(owner text, id text, lease uuid, error text)
          LIMIT %(most)s) AS b
    WHERE s.owner = b.owner AND s.id = b.id AND s.lease_token = b.lease
    RETURNING s.owner, s.id, b.lease
), done AS (
    UPDATE jobs AS j
    SET done = true, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
    FROM failed AS f WHERE j.owner = f.owner AND j.id = f.id
)
SELECT lease FROM failed;

-- name: requeue_outdated
-- Queues again, as background work (claimed only when no new work waits), a few finished
-- sessions whose parse result an older parser made. Their results stay readable meanwhile;
-- watchers see them go through the pipeline again.
WITH requeued AS (
    UPDATE sessions AS s
    SET lifecycle = 'queued', parse_status = 'pending', error = NULL,
        queued_at = now(), finished_at = NULL, lease_token = NULL
    FROM (
        SELECT owner, id FROM sessions
        WHERE parse_result IS NOT NULL AND coalesce(parser_version, 0) < %(version)s
          AND lifecycle IN ('parsed', 'summarized')
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS old
    WHERE s.owner = old.owner AND s.id = old.id
    RETURNING s.owner, s.id
), job AS (
    INSERT INTO jobs (owner, id, priority) SELECT owner, id, 1 FROM requeued
    ON CONFLICT (owner, id) DO UPDATE
    SET priority = 1, run_after = now(), attempts = 0, lease_token = NULL, lease_owner = NULL,
        lease_expires_at = NULL, done = false
), queued_by AS (
    INSERT INTO job_owners (owner) SELECT DISTINCT owner FROM requeued ON CONFLICT DO NOTHING
)
SELECT id FROM requeued;

-- name: jobs_wake
-- Wakes the workers for jobs given back without a re-ingest (which wakes them by itself).
SELECT pg_notify('session_jobs', '');

-- name: jobs_listen
LISTEN session_jobs;

-- name: listen_ping
-- Liveness of a LISTEN connection (sessionflow/listen.py, the hub's and the worker's): a
-- half-open link only shows itself when asked something.
SELECT 1;

-- ===== live stream: snapshots for the hub =====

-- name: live_listen
-- The hub's one LISTEN per server process (sessionflow/server/live.py): changes of sessions,
-- and revocations of API tokens (sql/003_token_revocation.sql).
LISTEN session_lifecycle;
LISTEN api_token_revoked;

-- name: live_snapshot
-- What a watch is answered with: the batch-status shape.
SELECT id, lifecycle, parse_status, version
FROM sessions WHERE owner = %(owner)s AND id = ANY(%(ids)s);

-- name: metrics_sessions_by_lifecycle
-- Aggregate counts only, across owners: what GET /metrics shows.
SELECT lifecycle, count(*) FROM sessions GROUP BY lifecycle;

-- name: metrics_notification_queue_usage
SELECT pg_notification_queue_usage();

-- ===== live stream: resync and token revocation =====

-- name: live_resync
-- What the hub re-reads after its LISTEN was lost: watched sessions of many owners at once,
-- given as (owner, id) pairs.
SELECT s.owner, s.id, s.lifecycle, s.parse_status, s.version
FROM unnest(%(owners)s::text[], %(ids)s::text[]) AS w(owner, id)
JOIN sessions AS s ON s.owner = w.owner AND s.id = w.id;

-- name: token_identity
-- The live stream's handshake: whose token it is, and its id (revoking it closes the stream).
SELECT id, owner FROM api_tokens WHERE token_hash = %(token_hash)s AND revoked_at IS NULL;

-- name: tokens_revoked
-- Which of these token ids are revoked or gone: what the hub checks for its open connections
-- after its LISTEN was lost (a revocation meanwhile was not heard).
SELECT t.id FROM unnest(%(ids)s::text[]) AS t(id)
WHERE NOT EXISTS (SELECT 1 FROM api_tokens AS a WHERE a.id = t.id AND a.revoked_at IS NULL);
