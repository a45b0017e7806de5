-- Lifecycle steps as HOT updates. PostgreSQL can write a new version of a row without touching
-- any index (a heap-only tuple) when no indexed column changes and the row's page has room.
-- Until now one partial index named lifecycle in its predicate, which made lifecycle an
-- indexed column: every step of every session (the claim, downloading -> parsing, the final
-- state) inserted into each of the table's indexes, the listing's expression index included.
-- The re-parse index now selects by parse_result, which a lifecycle step never changes, and
-- requeue_outdated checks the lifecycle on the rows it finds. Sessions pages keep room for
-- new row versions (fillfactor): pages written from now on; old pages as they are rewritten.
--
-- Safe to apply while servers and workers of the previous release run: an index and a storage
-- parameter change, nothing they read or write.

DROP INDEX sessions_parser_version_idx;
CREATE INDEX sessions_parser_version_idx ON sessions (coalesce(parser_version, 0))
    WHERE parse_result IS NOT NULL;

ALTER TABLE sessions SET (fillfactor = 80);
