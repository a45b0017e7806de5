-- A session is its files: the main transcript plus the subagent runs it started (Claude Code
-- 2.x writes each run to a file of its own). Files are stored content-addressed, once, and a
-- session row lists the ones it is made of.
--
-- Safe to apply while servers and workers of the previous release still run: every column is
-- added nullable or with a default, and a session whose `files` is NULL is read as before (its
-- one main transcript at transcript_key). A previous-release worker cannot process a session
-- of several files, though: stop the old workers before the new CLI uploads any (the README's
-- upgrade note says so).

-- [{name, role: main|subagent, agent_id, sha256, size}, ...]; NULL: the one main transcript.
ALTER TABLE sessions ADD COLUMN files jsonb;
-- The parser version that made parse_result (NULL: made before versions were recorded). A
-- newer worker parses older results again, in the background.
ALTER TABLE sessions ADD COLUMN parser_version integer;
-- 0: new work; 1: background work (re-parsing after an upgrade), claimed only when no new
-- work waits.
ALTER TABLE sessions ADD COLUMN priority smallint NOT NULL DEFAULT 0;

DROP INDEX sessions_runnable_idx;
CREATE INDEX sessions_runnable_idx ON sessions (priority, run_after)
    WHERE lifecycle IN ('queued', 'downloading', 'parsing', 'summarizing');

-- Finished sessions by the parser version that made their result: what re-parsing looks for.
CREATE INDEX sessions_parser_version_idx ON sessions (coalesce(parser_version, 0))
    WHERE lifecycle IN ('parsed', 'summarized');

-- Which file contents each owner has uploaded. The bytes are stored once whoever sends them,
-- but a session may only list files its owner has sent: knowing a file's sha256 is not
-- enough to read it through someone else's upload.
CREATE TABLE transcript_files (
    owner        text COLLATE "C" NOT NULL,
    sha256       text COLLATE "C" NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size         bigint NOT NULL CHECK (size >= 0),
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, sha256)
);

INSERT INTO transcript_files (owner, sha256, size, uploaded_at)
SELECT owner, transcript_sha256, transcript_size, created_at FROM sessions
ON CONFLICT DO NOTHING;

-- A session's files as the API and the worker read them: `files`, or the one main transcript
-- of a session stored before sessions could have several.
CREATE FUNCTION session_files(files jsonb, sha256 text, size bigint, metadata jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(files, jsonb_build_array(jsonb_build_object(
        'name', coalesce(metadata->>'file', 'transcript.jsonl'), 'role', 'main',
        'agent_id', NULL, 'sha256', sha256, 'size', size)))
$$;
