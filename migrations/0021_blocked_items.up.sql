-- Items that must not be recommended (`recsys items block`): taken down for legal or
-- moderation reasons, withdrawn from the catalog. Every API process reads the table every
-- --reco.blocked-refresh and leaves the items out of every list, whatever the source
-- (co-visitation, trending, popular, fresh). Their features stay: unblocking restores them.
CREATE TABLE blocked_items (
    item_id    text        COLLATE "C" PRIMARY KEY,
    reason     text        NOT NULL DEFAULT '',
    blocked_at timestamptz NOT NULL DEFAULT now()
);
