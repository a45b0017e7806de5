-- The queue apart from the sessions. Until now a session's job lived on its row: every claim
-- and every lease heartbeat rewrote the wide row and ran its lifecycle triggers. Here the
-- queue's mechanics (priority, retry time, attempts, the lease and who holds it) move to a
-- narrow table of their own, one row per session, and the sessions row changes only when what
-- a person can see changes (lifecycle, parse_status, results, error).
--
-- The sessions row keeps one thing of the job: lease_token, the token of the claim that may
-- write it. Every stage write is fenced by it on the very row it changes, so a re-ingest or a
-- new claim that changed it is seen by PostgreSQL's recheck of that row, with no lock on the
-- job taken first. It changes with the claim (which moves a queued session to downloading, a
-- change watchers see anyway) and with the final write; only a job resumed after a crash
-- writes it without a visible change.
--
-- Stop every server and worker of the previous release before this applies: it drops the
-- columns their statements write (attempts, run_after, priority, lease_owner,
-- lease_expires_at). The first new server or worker to start applies it, in one transaction,
-- and moves every queued, in-flight and retry-waiting job across as it stood: a lease an old
-- worker held still runs out at its time and its session is then taken up again.

CREATE TABLE jobs (
    owner             text COLLATE "C" NOT NULL,
    id                text COLLATE "C" NOT NULL,
    -- 0: new work; 1: background work (re-parsing after an upgrade), claimed only when no
    -- new work waits.
    priority          smallint NOT NULL DEFAULT 0,
    run_after         timestamptz NOT NULL DEFAULT now(),
    attempts          integer NOT NULL DEFAULT 0,
    lease_token       uuid,
    lease_owner       text,
    lease_expires_at  timestamptz,
    -- The session reached a terminal state: nothing left to claim. The row stays, so the
    -- session's attempts stay readable, until a re-ingest queues it again.
    done              boolean NOT NULL DEFAULT false,
    PRIMARY KEY (owner, id),
    FOREIGN KEY (owner, id) REFERENCES sessions (owner, id) ON DELETE CASCADE
);

-- What the claim reads, per owner: that owner's waiting jobs, in the order it takes them.
CREATE INDEX jobs_waiting_idx ON jobs (owner, priority, run_after) WHERE NOT done;

-- Fair claiming: the owners who have ever queued work, and when a claim last took one of
-- their jobs. A claim serves the owners it served longest ago first, one job each per turn
-- (queued as A A A A B B C, they run as A B C A B A A), so one owner's backlog never holds
-- another's few sessions behind it.
CREATE TABLE job_owners (
    owner      text COLLATE "C" PRIMARY KEY,
    served_at  timestamptz  -- NULL: never served, first in line
);

INSERT INTO jobs (owner, id, priority, run_after, attempts, lease_token, lease_owner,
                  lease_expires_at, done)
SELECT owner, id, priority, run_after, attempts, lease_token, lease_owner, lease_expires_at,
       lifecycle NOT IN ('queued', 'downloading', 'parsing', 'summarizing')
FROM sessions;

INSERT INTO job_owners (owner) SELECT DISTINCT owner FROM sessions;

DROP INDEX sessions_runnable_idx;
ALTER TABLE sessions
    DROP COLUMN attempts,
    DROP COLUMN run_after,
    DROP COLUMN priority,
    DROP COLUMN lease_owner,
    DROP COLUMN lease_expires_at;
