-- Settings every pod of a deployment must share for the data to stay correct (pkg/postgres
-- Agree): the Redis key prefix the feature copy lives under and the topics the events travel
-- on. The first pod that starts records its values; a pod whose value differs refuses to work
-- (consumer) or stays unready (api) with an error naming the setting and both values, instead
-- of writing a second copy or publishing to a topic nobody reads. A deliberate change:
-- docs/runbook.md, "Settings every pod must agree on".
CREATE TABLE deployment_settings (
    name        text        COLLATE "C" PRIMARY KEY,
    value       text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
