-- Listing a person's sessions, most recent first (GET /api/sessions, `sessionflow list`).
--
-- "Most recent" means when the session happened, not when it was uploaded: a backfill of 600
-- sessions uploads them all in one minute, and `--since 7d` must still mean the sessions of the
-- last week. active_at is when the session was last active: its transcript's last timestamp
-- once it is parsed, until then when its files were last written as the client reported it
-- (metadata.modified), else the upload's time; never later than the moment it is recorded. It
-- is the listing's keyset order, so it is recomputed only when what it comes from is written:
-- a new row, new metadata (a re-ingest) or a new parse result, never by a lifecycle step. A
-- session therefore moves at most once on its way through the pipeline (when it is parsed),
-- and sessions added while someone pages never make them see one twice or miss one.
--
-- Safe to apply while servers and workers of the previous release run: the column is filled by
-- a trigger, so their writes keep it right too.

-- A time from a transcript or from the client's metadata, or NULL when it is missing, not a
-- time, or not a plausible one (infinite, before 1970): a bad value must not refuse an upload or
-- a parse, nor make a time no client can read.
CREATE FUNCTION session_time(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t timestamptz;
BEGIN
    t := value::timestamptz;
    IF NOT isfinite(t) OR t < '1970-01-01 00:00+00' THEN
        RETURN NULL;
    END IF;
    RETURN t;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

ALTER TABLE sessions ADD COLUMN active_at timestamptz;

CREATE FUNCTION sessions_active_at() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    fallback timestamptz := now();
BEGIN
    IF TG_OP = 'INSERT' THEN
        fallback := NEW.created_at;
    ELSIF OLD.active_at IS NULL THEN
        fallback := NEW.created_at;  -- a row made before this migration: when it was uploaded
    END IF;
    NEW.active_at := least(
        coalesce(session_time(NEW.parse_result->>'last_timestamp'),
                 session_time(NEW.metadata->>'modified'),
                 fallback),
        now());
    RETURN NEW;
END
$$;

-- UPDATE OF: fired only by statements that write these columns, so the worker's lifecycle steps
-- pay nothing for it.
CREATE TRIGGER sessions_active_at
    BEFORE INSERT OR UPDATE OF metadata, parse_result, active_at ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_active_at();

-- Rows made before this migration (the trigger computes each).
UPDATE sessions SET active_at = NULL;
ALTER TABLE sessions ALTER COLUMN active_at SET NOT NULL;

-- The project a session belongs to, as the list shows it and --project matches it: the last
-- part of the directory the session ran in once it is parsed, else the project folder the
-- client found it in.
CREATE FUNCTION session_project(parse_result jsonb, metadata jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        nullif(regexp_replace(rtrim(parse_result->>'cwd', '/\'), '^.*[/\\]', ''), ''),
        metadata->>'project')
$$;

-- The listing's order within one owner, newest first; --since is a range of it.
CREATE INDEX sessions_list_idx ON sessions (owner, active_at DESC, id DESC);
-- The same order within one project (--project), matched without regard to case.
CREATE INDEX sessions_list_project_idx
    ON sessions (owner, lower(session_project(parse_result, metadata)), active_at DESC, id DESC);

-- A session as the listing shows it: both listing queries (sql/queries.sql) read this, so its
-- columns are written once. A plain view: PostgreSQL inlines it, and the queries' conditions
-- still reach the indexes above.
CREATE VIEW session_list_rows AS
SELECT owner, id, lifecycle, parse_status, active_at,
       session_project(parse_result, metadata) AS project,
       coalesce(nullif(summary->>'title', ''), nullif(parse_result->>'summary', ''),
                left(parse_result->>'first_prompt', 300)) AS title,
       (parse_result->>'duration_seconds')::float8 AS duration_seconds,
       CASE WHEN parse_result IS NOT NULL THEN
           coalesce((parse_result#>>'{tokens,input}')::bigint, 0)
           + coalesce((parse_result#>>'{tokens,output}')::bigint, 0)
           + coalesce((parse_result#>>'{tokens,cache_read}')::bigint, 0)
           + coalesce((parse_result#>>'{tokens,cache_creation}')::bigint, 0)
       END AS tokens,
       (parse_result->>'cost_usd')::float8 AS cost_usd
FROM sessions;
