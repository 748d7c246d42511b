DROP FUNCTION IF EXISTS outbox_claim(bigint, integer, integer, bigint, text, bigint);
