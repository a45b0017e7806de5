-- Listing a person's sessions, most recent first (GET /api/sessions, `sessionflow list`).
--
-- "Most recent" means when the session happened, not when it was uploaded: a backfill of 600
-- sessions uploads them all in one minute, and `--since 7d` must still mean the sessions of the
-- last week. The client says when each session's files were last written (metadata.modified);
-- active_at keeps that, never later than the upload, or the upload time when the client said
-- nothing usable. It is set when the row is made and when a re-ingest brings new metadata, and
-- never by the pipeline: it is the listing's keyset order, and a key that moved while someone
-- pages would show a session twice or skip it.
--
-- Safe to apply while servers and workers of the previous release run: the column is filled by
-- a trigger, so their inserts get it too.

-- When the client says the session was last written: metadata.modified as a time, or NULL when
-- it is missing or not a time (metadata is the client's; a bad value must not refuse an upload).
CREATE FUNCTION session_modified_at(metadata jsonb) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF jsonb_typeof(metadata->'modified') IS DISTINCT FROM 'string' THEN
        RETURN NULL;
    END IF;
    RETURN (metadata->>'modified')::timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

ALTER TABLE sessions ADD COLUMN active_at timestamptz;

CREATE FUNCTION sessions_active_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.metadata IS DISTINCT FROM OLD.metadata
       OR NEW.active_at IS NULL THEN
        NEW.active_at := least(coalesce(session_modified_at(NEW.metadata), NEW.created_at),
                               NEW.created_at);
    ELSE
        NEW.active_at := OLD.active_at;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sessions_active_at
    BEFORE INSERT OR UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_active_at();

-- Rows made before this migration (the trigger fills active_at, as it is NULL).
UPDATE sessions SET active_at = NULL WHERE active_at IS NULL;
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
