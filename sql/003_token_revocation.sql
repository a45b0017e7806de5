-- Revoking (or deleting) an API token closes the live-stream connections opened with it: each
-- server's live hub LISTENs on api_token_revoked, beside session_lifecycle, and closes the
-- WebSockets of that token (sessionflow/server/live.py). The payload names the token by its id
-- (never its hash) and its owner; it also tells whatever caches tokens to forget this one.

CREATE FUNCTION api_tokens_notify_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('api_token_revoked', json_build_object(
        'revoked_token', OLD.id, 'owner', OLD.owner)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_tokens_revoked
    AFTER UPDATE OF revoked_at ON api_tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION api_tokens_notify_revoked();

CREATE TRIGGER api_tokens_deleted
    AFTER DELETE ON api_tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL)
    EXECUTE FUNCTION api_tokens_notify_revoked();
